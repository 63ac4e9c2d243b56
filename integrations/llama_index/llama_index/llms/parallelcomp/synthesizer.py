"""`ParallelCompSynthesizer`: a LlamaIndex response synthesizer that hands every node it is given
to the engine as a separate document, in one call, and cites the nodes the engine kept."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation.events.synthesis import (
    SynthesizeEndEvent,
    SynthesizeStartEvent,
)
from llama_index.core.llms.llm import (
    astream_completion_response_to_tokens,
    stream_completion_response_to_tokens,
)
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate, PromptType
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, QueryType
from llama_index.core.types import RESPONSE_TEXT_TYPE

from parallelcomp_llm import InvalidInputError

from .base import ParallelCompLLM
from .framing import ContextCall
from .sources import kept_nodes

dispatcher = instrument.get_dispatcher(__name__)

DEFAULT_TEXT_QA_TEMPLATE = PromptTemplate(
    "{context_str}\n\n{query_str}", prompt_type=PromptType.QUESTION_ANSWER
)
"""The engine's own layout, the nodes then the query: the question is the query as it stands.
LlamaIndex's `DEFAULT_TEXT_QA_PROMPT`, or any template with `{context_str}` and `{query_str}`,
adds its own words around them."""


class ParallelCompSynthesizer(BaseSynthesizer):
    """Answers a query over all the nodes it is given in one ParallelComp call.

    Each node is one document of the context, shown to the model as LlamaIndex's synthesizers
    show it (`MetadataMode.LLM`: with its LLM-visible metadata such as a title or a file name).
    `text_qa_template` (prompt key `"text_qa_template"`) is cut at `{context_str}`: the text
    before it is the system prompt, the text after it (with the query) the question (`framing`).
    Nothing is packed or truncated: a context over the engine's `context_window` raises
    `ContextTooLongError`.

    The response's `source_nodes` are the nodes of the chunks the engine kept, most relevant
    first, scored by the engine's relevance (`sources.kept_nodes`: from 0 to 1, higher is more
    relevant), then `additional_source_nodes`; streamed responses get them when the stream ends.
    As with every LlamaIndex synthesizer, no nodes give the empty response.

    Args:
        llm: the `ParallelCompLLM` to answer with; default: `Settings.llm`.
        text_qa_template: a template with `{context_str}` and `{query_str}`; default: the nodes,
            then the query (`DEFAULT_TEXT_QA_TEMPLATE`).
        callback_manager, streaming: as for LlamaIndex's synthesizers.
    """

    def __init__(
        self,
        llm: ParallelCompLLM | None = None,
        text_qa_template: BasePromptTemplate | None = None,
        callback_manager: CallbackManager | None = None,
        streaming: bool = False,
    ) -> None:
        super().__init__(llm=llm, callback_manager=callback_manager, streaming=streaming)
        if not isinstance(self._llm, ParallelCompLLM):
            raise InvalidInputError(
                f"ParallelCompSynthesizer needs a ParallelCompLLM, got {type(self._llm).__name__}"
            )
        self._text_qa_template = text_qa_template or DEFAULT_TEXT_QA_TEMPLATE

    def _get_prompts(self) -> PromptDictType:
        return {"text_qa_template": self._text_qa_template}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        if "text_qa_template" in prompts:
            self._text_qa_template = prompts["text_qa_template"]

    def _call(
        self, query_str: str, documents: Sequence[str], response_kwargs: dict[str, Any]
    ) -> ContextCall:
        """The engine call of a query over `documents`; extra arguments fill the template."""
        call = self._llm.context_call(
            self._text_qa_template,
            context_str=list(documents),
            query_str=query_str,
            **response_kwargs,
        )
        if call is None:
            raise InvalidInputError("text_qa_template must show {context_str} exactly once")
        return call

    # -- BaseSynthesizer's text interface ----------------------------------------------------

    def get_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        """The answer over `text_chunks` (each a document); its tokens when streaming."""
        call = self._call(query_str, text_chunks, response_kwargs)
        if self._streaming:
            return stream_completion_response_to_tokens(
                self._llm.stream_complete(call.question, **call.options)
            )
        return self._llm.complete(call.question, **call.options).text

    async def aget_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        """`get_response` for async callers."""
        call = self._call(query_str, text_chunks, response_kwargs)
        if self._streaming:
            completions = await self._llm.astream_complete(call.question, **call.options)
            return await astream_completion_response_to_tokens(completions)
        return (await self._llm.acomplete(call.question, **call.options)).text

    # -- responses with the kept nodes as sources --------------------------------------------

    @dispatcher.span
    def synthesize(
        self,
        query: QueryType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        if not nodes:
            return super().synthesize(query, nodes, additional_source_nodes, **response_kwargs)
        query = QueryBundle(query_str=query) if isinstance(query, str) else query
        dispatcher.event(SynthesizeStartEvent(query=query))
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: query.query_str}
        ) as event:
            call = self._call(query.query_str, _texts(nodes), response_kwargs)
            extra = list(additional_source_nodes or [])
            if self._streaming:
                completions = self._llm.stream_complete(call.question, **call.options)
                response = self._streaming_response(completions, nodes, extra)
            else:
                completion = self._llm.complete(call.question, **call.options)
                response = self._response(completion, nodes, extra)
            event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    @dispatcher.span
    async def asynthesize(
        self,
        query: QueryType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        if not nodes:
            return await super().asynthesize(
                query, nodes, additional_source_nodes, **response_kwargs
            )
        query = QueryBundle(query_str=query) if isinstance(query, str) else query
        dispatcher.event(SynthesizeStartEvent(query=query))
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: query.query_str}
        ) as event:
            call = self._call(query.query_str, _texts(nodes), response_kwargs)
            extra = list(additional_source_nodes or [])
            if self._streaming:
                completions = await self._llm.astream_complete(call.question, **call.options)
                response = self._async_streaming_response(completions, nodes, extra)
            else:
                completion = await self._llm.acomplete(call.question, **call.options)
                response = self._response(completion, nodes, extra)
            event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    def _sources(
        self, completion: CompletionResponse, nodes: list[NodeWithScore], extra: list[NodeWithScore]
    ) -> list[NodeWithScore]:
        """The kept nodes of a final completion, scored, then the additional source nodes."""
        return kept_nodes([n.node for n in nodes], completion.raw["answer"]) + extra

    def _metadata(self, sources: list[NodeWithScore]) -> dict[str, Any]:
        return self._get_metadata_for_response([source.node for source in sources]) or {}

    def _response(
        self, completion: CompletionResponse, nodes: list[NodeWithScore], extra: list[NodeWithScore]
    ) -> Response:
        sources = self._sources(completion, nodes, extra)
        return Response(completion.text, sources, self._metadata(sources))

    def _streaming_response(
        self,
        completions: Iterator[CompletionResponse],
        nodes: list[NodeWithScore],
        extra: list[NodeWithScore],
    ) -> StreamingResponse:
        sources: list[NodeWithScore] = []
        metadata: dict[str, Any] = {}

        def tokens() -> Iterator[str]:
            for completion in completions:
                yield from self._deltas(completion, nodes, extra, sources, metadata)

        return StreamingResponse(tokens(), source_nodes=sources, metadata=metadata)

    def _async_streaming_response(
        self,
        completions: AsyncIterator[CompletionResponse],
        nodes: list[NodeWithScore],
        extra: list[NodeWithScore],
    ) -> AsyncStreamingResponse:
        sources: list[NodeWithScore] = []
        metadata: dict[str, Any] = {}

        async def tokens() -> AsyncIterator[str]:
            async for completion in completions:
                for delta in self._deltas(completion, nodes, extra, sources, metadata):
                    yield delta

        return AsyncStreamingResponse(tokens(), source_nodes=sources, metadata=metadata)

    def _deltas(
        self,
        completion: CompletionResponse,
        nodes: list[NodeWithScore],
        extra: list[NodeWithScore],
        sources: list[NodeWithScore],
        metadata: dict[str, Any],
    ) -> Iterator[str]:
        """A streamed completion's delta; the final one fills in `sources` and `metadata`."""
        if completion.raw is not None:
            sources.extend(self._sources(completion, nodes, extra))
            metadata.update(self._metadata(sources))
        if completion.delta:
            yield completion.delta


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    """The nodes as the model sees them, as LlamaIndex's synthesizers show them."""
    return [node.node.get_content(metadata_mode=MetadataMode.LLM) for node in nodes]
