"""`ChatParallelComp`: a LangChain `BaseChatModel` over a `ParallelCompEngine`, with chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from parallelcomp_llm import Answer, InvalidInputError

from .context import identified
from .messages import chat_turns
from .metadata import answer_metadata, usage_metadata
from .settings import OpenStream, ParallelCompSettings
from .streams import aanswer_events, answer_events


class ChatParallelComp(ParallelCompSettings, BaseChatModel):
    """Chat with an open-weight model, over contexts far beyond its trained window.

    The whole conversation goes to the engine's `stream_chat`, system messages included. A chat
    that fits the trained window is answered through the model's chat template, as by any local
    chat model; a longer one, and any chat with `context=` (a text, or a list of texts or
    `Document`s, e.g. through `chat.bind(context=docs)`), is answered with ParallelComp: the engine
    cuts the chat into a system prompt (short leading system messages), context (the given
    documents, then the earlier turns and long system messages) and a question (the tail of the
    last message), by the rule of `parallelcomp_llm.long_prompt`. Document boundaries are chunk
    boundaries, and a `Document`'s title and source are shown in front of its text.

    `profile["max_input_tokens"]` and `context_window` are what the engine accepts
    (`max_context_tokens`); `native_window` is the trained window. A longer input raises
    `ParallelCompContextOverflowError` (the engine's `ContextTooLongError` and LangChain's
    `ContextOverflowError`). The context is identified by its digest in invocation params and the
    LLM cache key, never inlined.

    Example:
        ```python
        from langchain_parallelcomp import ChatParallelComp

        chat = ChatParallelComp(max_tokens=64)  # SmolLM2-135M-Instruct, fetched once
        chat.bind(context=documents).invoke("Who signed the contract?")
        ```
    """

    @property
    def _llm_type(self) -> str:
        return "parallelcomp-chat"

    def _resolve_model_profile(self) -> ModelProfile | None:
        return ModelProfile(
            name=self.model_name,
            open_weights=True,
            max_input_tokens=self.context_window,
            text_inputs=True,
            image_inputs=False,
            audio_inputs=False,
            video_inputs=False,
            pdf_inputs=False,
            text_outputs=True,
            tool_calling=False,
            structured_output=False,
        )

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the prompt the messages make with the model's chat template."""
        if tools:
            raise InvalidInputError("ChatParallelComp does not support tools")
        return len(self.engine.prompts.chat_prompt_ids(chat_turns(messages)))

    def _get_invocation_params(
        self, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return super()._get_invocation_params(stop=stop, **identified(kwargs))

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        """The LLM cache key: the invocation params, the context by its digest."""
        return str(sorted(self._get_invocation_params(stop=stop, **kwargs).items()))

    def _open(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> OpenStream:
        context, decoding = self._call_settings(stop, kwargs)
        turns = chat_turns(messages)
        return lambda: self.engine.stream_chat(turns, decoding, context=context)

    def _result(self, answer: Answer) -> ChatResult:
        message = AIMessage(
            content=answer.text,
            response_metadata=answer_metadata(answer, self.model_name),
            usage_metadata=usage_metadata(answer),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunk(self, event: str | Answer) -> ChatGenerationChunk:
        if isinstance(event, str):
            return ChatGenerationChunk(message=AIMessageChunk(content=event))
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                chunk_position="last",
                response_metadata=answer_metadata(event, self.model_name),
                usage_metadata=usage_metadata(event),
            )
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        *_, answer = answer_events(self._open(messages, stop, kwargs))
        return self._result(answer)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        events = [event async for event in aanswer_events(self._open(messages, stop, kwargs))]
        return self._result(events[-1])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for event in answer_events(self._open(messages, stop, kwargs)):
            yield self._chunk(event)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for event in aanswer_events(self._open(messages, stop, kwargs)):
            yield self._chunk(event)
