"""`LongContextQueryEngine`: sends every node of an index to the engine in one call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.data_structs.data_structs import IndexDict, IndexList
from llama_index.core.indices.base import BaseIndex
from llama_index.core.ingestion import run_transformations
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import BaseNode, Document, NodeWithScore, TransformComponent
from llama_index.core.settings import Settings

from parallelcomp_llm import InvalidInputError

from .base import ParallelCompLLM
from .synthesizer import ParallelCompSynthesizer


class LongContextQueryEngine(CustomQueryEngine):
    """Answers each query over all `nodes` in one ParallelComp call, instead of a top-k retrieval.

    A `ParallelCompSynthesizer` over every node: each node (with its LLM-visible metadata) is a
    separate document of the context, nothing is packed, so corpora up to the engine's
    `context_window` fit; the response's `source_nodes` are the nodes whose chunks the engine
    kept, scored by the engine. Its prompt is `"response_synthesizer:text_qa_template"`
    (`get_prompts` / `update_prompts`). With `streaming=True`, `query` returns a
    `StreamingResponse` whose `source_nodes` and `metadata` are filled in when its stream ends.
    """

    llm: ParallelCompLLM
    nodes: list[BaseNode]
    streaming: bool = False

    _synthesizer: ParallelCompSynthesizer = PrivateAttr()

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        if not self.nodes:
            raise InvalidInputError("LongContextQueryEngine needs at least one node")
        self._synthesizer = ParallelCompSynthesizer(llm=self.llm, streaming=self.streaming)

    @classmethod
    def from_index(
        cls, index: BaseIndex, llm: ParallelCompLLM, **kwargs: Any
    ) -> LongContextQueryEngine:
        """Every node of a `SummaryIndex` or `VectorStoreIndex`, in insertion order."""
        struct = index.index_struct
        if isinstance(struct, IndexList):
            node_ids = list(struct.nodes)
        elif isinstance(struct, IndexDict):
            node_ids = list(struct.nodes_dict.values())
        else:
            raise InvalidInputError(
                f"cannot list the nodes of a {type(index).__name__}; "
                "build LongContextQueryEngine(llm=..., nodes=...) instead"
            )
        if not node_ids:
            raise InvalidInputError(
                f"the {type(index).__name__} lists no nodes in its docstore (empty, or its vector "
                "store keeps the text itself); build LongContextQueryEngine(llm=..., nodes=...)"
            )
        return cls(llm=llm, nodes=index.docstore.get_nodes(node_ids), **kwargs)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        llm: ParallelCompLLM,
        transformations: list[TransformComponent] | None = None,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> LongContextQueryEngine:
        """Nodes from `documents` by `transformations` (default: `Settings.transformations`)."""
        nodes = run_transformations(
            list(documents),
            transformations or Settings.transformations,
            show_progress=show_progress,
        )
        return cls(llm=llm, nodes=list(nodes), **kwargs)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"response_synthesizer": self._synthesizer}

    def _all_nodes(self) -> list[NodeWithScore]:
        return [NodeWithScore(node=node) for node in self.nodes]

    def custom_query(self, query_str: str) -> RESPONSE_TYPE:
        return self._synthesizer.synthesize(query_str, self._all_nodes())

    async def acustom_query(self, query_str: str) -> RESPONSE_TYPE:
        return await self._synthesizer.asynthesize(query_str, self._all_nodes())
