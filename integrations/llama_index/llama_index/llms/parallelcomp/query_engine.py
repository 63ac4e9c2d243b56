"""`LongContextQueryEngine`: sends every node of an index to the engine in one call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.data_structs.data_structs import IndexDict, IndexList
from llama_index.core.indices.base import BaseIndex
from llama_index.core.ingestion import run_transformations
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import (
    BaseNode,
    Document,
    MetadataMode,
    NodeWithScore,
    TransformComponent,
)
from llama_index.core.settings import Settings

from parallelcomp_llm import Answer, InvalidInputError

from .base import ParallelCompLLM
from .sources import kept_nodes


class LongContextQueryEngine(CustomQueryEngine):
    """Answers each query over all `nodes` in one ParallelComp call, instead of a top-k retrieval.

    The text of every node (with its LLM-visible metadata, as LlamaIndex's synthesizers show it)
    goes to the engine as a separate document with the query; no prompt is packed, so corpora up
    to the engine's `context_window` fit. The response's `source_nodes` are the nodes whose
    chunks the engine kept, scored by the engine (see `sources.kept_nodes`). With
    `streaming=True`, `query` returns a `StreamingResponse` whose `source_nodes` and `metadata`
    are filled in when its stream ends.
    """

    llm: ParallelCompLLM
    nodes: list[BaseNode]
    streaming: bool = False

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

    def _context(self) -> list[str]:
        return [node.get_content(metadata_mode=MetadataMode.LLM) for node in self.nodes]

    def _response(self, answer: Answer) -> Response:
        sources = kept_nodes(self.nodes, answer)
        return Response(answer.text, sources, _metadata(sources))

    def custom_query(self, query_str: str) -> Response | StreamingResponse:
        if not self.streaming:
            completion = self.llm.complete(query_str, context=self._context())
            return self._response(completion.raw)
        sources: list[NodeWithScore] = []
        metadata: dict[str, Any] = {}
        completions = self.llm.stream_complete(query_str, context=self._context())

        def tokens() -> Iterator[str]:
            for completion in completions:
                yield from self._deltas(completion, sources, metadata)

        return StreamingResponse(tokens(), source_nodes=sources, metadata=metadata)

    async def acustom_query(self, query_str: str) -> Response | AsyncStreamingResponse:
        if not self.streaming:
            completion = await self.llm.acomplete(query_str, context=self._context())
            return self._response(completion.raw)
        sources: list[NodeWithScore] = []
        metadata: dict[str, Any] = {}
        completions = await self.llm.astream_complete(query_str, context=self._context())

        async def tokens() -> AsyncIterator[str]:
            async for completion in completions:
                for delta in self._deltas(completion, sources, metadata):
                    yield delta

        return AsyncStreamingResponse(tokens(), source_nodes=sources, metadata=metadata)

    def _deltas(
        self, completion: CompletionResponse, sources: list[NodeWithScore], metadata: dict[str, Any]
    ) -> Iterator[str]:
        """A streamed completion's delta; the final one fills in `sources` and `metadata`."""
        if completion.raw is not None:
            sources.extend(kept_nodes(self.nodes, completion.raw))
            metadata.update(_metadata(sources))
        if completion.delta:
            yield completion.delta


def _metadata(sources: list[NodeWithScore]) -> dict[str, Any]:
    """Response metadata as LlamaIndex's synthesizers make it: node id -> node metadata."""
    return {source.node.node_id: source.node.metadata for source in sources}
