"""`ChatParallelComp`: a LangChain `BaseChatModel` over a `ParallelCompEngine`: chats through the
model's template, tool calling (`bind_tools`) and structured output (`with_structured_output`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput, ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import BaseModel

from parallelcomp_llm import Answer, ToolSet

from .context import identified
from .messages import chat_turns
from .metadata import answer_metadata, usage_metadata
from .settings import OpenStream, ParallelCompSettings
from .streams import Event, aanswer_events, answer_events
from .structured_output import StructuredOutputMethod, parsed_output, structured_model
from .tool_calls import (
    TOOL_KEYWORDS,
    LangChainTool,
    engine_tool_choice,
    message_tool_calls,
    openai_tools,
    tool_call_chunks,
)


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

    Tools (`bind_tools`) are offered through the chat template where it takes them, else as the
    engine's Hermes-style text; the calls come back as `AIMessage.tool_calls`, and a stream with
    tools bound brings its text as it is generated (never a call's markup) and the calls in its
    last chunk. `with_structured_output` decodes under the
    schema's grammar. Both work over any context, with ParallelComp too.

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
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=True,
            structured_output=True,
        )

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[LangChainTool] | None = None
    ) -> int:
        """Tokens of the prompt the messages make with the model's chat template, with `tools`
        offered as a call would offer them (through the template, or as text)."""
        tool_set = ToolSet(openai_tools(tools)) if tools else None
        return len(self.engine.prompts.chat_prompt_ids(chat_turns(messages), tool_set))

    def bind_tools(
        self,
        tools: Sequence[LangChainTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The model with `tools` offered on every call (converted to OpenAI's function format by
        `convert_to_openai_tool`), and `kwargs` bound as other call keywords.

        `tool_choice`: None or "auto" (the model decides), "none" (no call), "any", "required"
        or True (a call of some tool), a tool's name or `{"type": "function", "function":
        {"name": ...}}` (a call of that tool). A forced call is made by the grammar, so it is
        always a call of an allowed tool with arguments of its schema. The engine checks the
        tools and the choice when the model is called, before any model work.
        """
        choice = engine_tool_choice(tool_choice)
        if choice is not None:
            kwargs["tool_choice"] = choice
        return self.bind(tools=openai_tools(tools), **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: StructuredOutputMethod = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """The model answering in `schema` (a pydantic class, a TypedDict class, a JSON schema
        with a `title`, or an OpenAI function dict): an instance of a pydantic class, else a dict.

        `method`: "json_schema" (the answer is the schema's JSON value), "function_calling" (a
        forced call of a tool of the schema) or "json_mode" (a JSON object; the prompt says which
        keys). Each decodes under a grammar, so answers always follow the schema (JSON mode: are
        JSON objects) and `strict` changes nothing. An answer cut by `max_tokens` is refused
        (`OutputParserException`). With `include_raw`, the output is `{"raw": message,
        "parsed": value or None, "parsing_error": error or None}`. `kwargs` are bound as call
        keywords (e.g. `context=`, `max_tokens=`).
        """
        model, parser = structured_model(self, schema, method, strict, kwargs)
        return parsed_output(model, parser, include_raw)

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
        """Start one engine chat: the call's tools as they are, its other keywords as the
        context and decoding settings."""
        tools = {name: value for name, value in kwargs.items() if name in TOOL_KEYWORDS}
        settings = {name: value for name, value in kwargs.items() if name not in TOOL_KEYWORDS}
        context, decoding = self._call_settings(stop, settings)
        turns = chat_turns(messages)
        return lambda: self.engine.stream_chat(turns, decoding, context=context, **tools)

    def _result(self, answer: Answer) -> ChatResult:
        message = AIMessage(
            content=answer.text,
            tool_calls=message_tool_calls(answer),
            response_metadata=answer_metadata(answer, self.model_name),
            usage_metadata=usage_metadata(answer),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunk(self, event: Event) -> ChatGenerationChunk:
        """The stream's chunk for one event: a text delta as it comes (the engine's deltas are
        never call markup), and for the answer the last chunk, with its calls as
        `tool_call_chunks` and its metadata."""
        if isinstance(event, str):
            return ChatGenerationChunk(message=AIMessageChunk(content=event))
        last = AIMessageChunk(
            content="",
            chunk_position="last",
            tool_call_chunks=tool_call_chunks(event),
            response_metadata=answer_metadata(event, self.model_name),
            usage_metadata=usage_metadata(event),
        )
        return ChatGenerationChunk(message=last)

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
