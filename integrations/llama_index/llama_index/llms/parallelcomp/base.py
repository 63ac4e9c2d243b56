"""`ParallelCompLLM`: a LlamaIndex `FunctionCallingLLM` over a `ParallelCompEngine`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Sequence
from pathlib import Path
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr
from llama_index.core.instrumentation.events.llm import (
    LLMPredictEndEvent,
    LLMPredictStartEvent,
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import (
    ToolSelection,
    astream_completion_response_to_tokens,
    stream_completion_response_to_tokens,
)
from llama_index.core.program.utils import FlexibleModel
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.tools.types import BaseTool
from llama_index.core.types import Model, PydanticProgramMode, TokenAsyncGen, TokenGen
from transformers import PreTrainedTokenizerBase

from parallelcomp_llm import AnswerStream, DecodeSettings, ParallelCompEngine

from . import responses, structured
from .framing import CONTEXT_MARK, ContextCall, context_variable, cut_at_context
from .structured import TemplateRequest
from .tool_calling import (
    engine_messages,
    first_call_only,
    openai_tools,
    tool_selections,
)

dispatcher = instrument.get_dispatcher(__name__)

DECODING_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
"""The fields that are the engine's `DecodeSettings` of every call (validated by it)."""
RENAMES = {"max_tokens": "max_new_tokens"}
"""LlamaIndex's usual names of the engine's decoding settings."""


class ParallelCompLLM(FunctionCallingLLM):
    """A LlamaIndex LLM that answers over far more text than the model's trained window.

    `complete` and `chat` behave like any local LLM (`chat` applies the model's chat template);
    a prompt or chat longer than the trained window is answered with ParallelComp, cut by the
    engine into a system prompt, context and question. Pass `context=` (a text or a list of
    documents) to either of them and the engine answers the prompt, or the chat, over that
    context: this is what `ParallelCompSynthesizer` does with retrieved nodes. `predict` and
    `stream` (and their async variants), which LlamaIndex's synthesizers and chat engines call
    with the context as a template argument (`context_str`, `context_msg`), send that argument
    as the context and the template's text around it as system prompt and question (`framing`).
    `metadata.context_window` is what the engine accepts (`max_context_tokens`);
    `native_window` is the model's trained window.

    Function calling (`chat_with_tools`, `predict_and_call`, `FunctionAgent`): the tools go to
    the engine in OpenAI's function format, through the model's chat template where it takes
    them, else as Hermes-style prompt text (`parallelcomp_llm.tools`); `tool_required=True`, or
    a tool's name as `tool_choice`, makes the grammar force a valid call. A response's calls
    are `ToolCallBlock`s of its message (`tool_calling`); streams show only text, never a
    call's markup, and give the calls with the final response. Structured output
    (`structured_predict`, `as_structured_llm` and their async and streaming variants) decodes
    under the output class's JSON schema (`response_format`), so the result always validates.

    Per-call keyword arguments: `context`; with it, `system_prompt` (every chunk's system turn;
    the field of that name is LlamaIndex's, which `predict` puts in front of its templates);
    `max_tokens` (or `max_new_tokens`), `temperature`, `top_p`, `top_k`, `seed`, `stop`,
    `ignore_eos`, `response_format` (the engine's `DecodeSettings`, over the fields of the same
    names); for chats, `tools` and `tool_choice` (the engine's). Final responses (for streams:
    the last one) have a `raw` dict with the token `usage` and the engine's `answer`
    (`responses`).

    Args:
        engine: the engine to use; default: `ParallelCompEngine.default()` (SmolLM2-135M-Instruct).
    """

    model_name: str = Field(
        default="", description="Model name reported in `metadata`; default: from the model."
    )
    max_new_tokens: int | None = Field(
        default=None,
        description="Answer length limit in tokens; None: the engine's answer_reserve_tokens.",
    )
    temperature: float | None = Field(default=None, description="None or 0 decodes greedily.")
    top_p: float | None = Field(default=None, description="Nucleus sampling mass.")
    top_k: int | None = Field(default=None, description="Sample from the top k tokens.")
    seed: int | None = Field(default=None, description="Seed of the sampler.")
    stop: list[str] | None = Field(
        default=None, description="Strings that end the answer (not included in it)."
    )

    _engine: ParallelCompEngine = PrivateAttr()

    def __init__(self, engine: ParallelCompEngine | None = None, **kwargs: Any) -> None:
        if engine is None:
            engine = ParallelCompEngine.default()
        kwargs.setdefault(
            "model_name", Path(engine.model.config.name_or_path).name or "parallelcomp"
        )
        super().__init__(**kwargs)
        self._engine = engine
        self._settings({})

    @classmethod
    def class_name(cls) -> str:
        return "ParallelCompLLM"

    @property
    def engine(self) -> ParallelCompEngine:
        """The `ParallelCompEngine` this LLM runs on."""
        return self._engine

    @property
    def native_window(self) -> int:
        """The model's trained window in tokens; a prompt over it takes ParallelComp's path."""
        return self._engine.native_window

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer: `Settings.tokenizer = llm.tokenizer` makes LlamaIndex use it."""
        return self._engine.tokenizer

    @property
    def metadata(self) -> LLMMetadata:
        template = self._engine.config.use_chat_template
        return LLMMetadata(
            context_window=self._engine.context_window,
            num_output=self.max_new_tokens or self._engine.config.answer_reserve_tokens,
            is_chat_model=(
                bool(getattr(self._engine.tokenizer, "chat_template", None))
                if template is None
                else template
            ),
            is_function_calling_model=True,
            model_name=self.model_name,
        )

    # -- requests ---------------------------------------------------------------------------

    def _settings(self, kwargs: dict[str, Any]) -> DecodeSettings:
        """The fields' decoding settings with a call's keywords over them (`max_tokens` accepted
        for `max_new_tokens`; unknown names refused)."""
        fields = {name: getattr(self, name) for name in DECODING_FIELDS}
        return DecodeSettings.from_fields(fields, kwargs, RENAMES)

    def _completion_stream(
        self, prompt: str, formatted: bool, kwargs: dict[str, Any]
    ) -> AnswerStream:
        context = kwargs.pop("context", None)
        if context is not None:
            system_prompt = kwargs.pop("system_prompt", None)
            settings = self._settings(kwargs)
            return self._engine.stream(context, prompt, settings, system_prompt=system_prompt)
        settings = self._settings(kwargs)
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        return self._engine.stream_complete(prompt, settings)

    def _chat_stream(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> AnswerStream:
        """The engine's stream of a chat (its deltas show text, never a call's markup)."""
        context = kwargs.pop("context", None)
        tools, tool_choice = kwargs.pop("tools", None), kwargs.pop("tool_choice", None)
        return self._engine.stream_chat(
            engine_messages(messages),
            self._settings(kwargs),
            context=context,
            tools=tools,
            tool_choice=tool_choice,
        )

    def context_call(self, prompt: BasePromptTemplate, **prompt_args: Any) -> ContextCall | None:
        """`prompt` with `prompt_args` as a question over the context argument (`context_str` or
        `context_msg`; a text or a list of documents), rendered as `predict` renders it; None
        when the call has no context argument that the rendered prompt shows once."""
        variable = context_variable(prompt_args)
        if variable is None:
            return None
        marked = {**prompt_args, variable: CONTEXT_MARK}
        if self.metadata.is_chat_model:
            rendered = [message.content or "" for message in self._get_messages(prompt, **marked)]
        else:
            rendered = [self._get_prompt(prompt, **marked)]
        return cut_at_context(rendered, prompt_args[variable])

    # -- sync -------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        answer = self._completion_stream(prompt, formatted, kwargs).wait()
        return responses.completion(answer.text, answer=answer)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        stream = self._completion_stream(prompt, formatted, kwargs)
        return responses.stream_responses(stream, responses.completion)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        stream = self._chat_stream(messages, kwargs)
        answer = stream.wait()
        return responses.chat(answer.text, answer=answer)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        stream = self._chat_stream(messages, kwargs)
        return responses.stream_responses(stream, responses.chat)

    # -- async: the model runs in worker threads ----------------------------------------------

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        stream = await asyncio.to_thread(self._completion_stream, prompt, formatted, kwargs)
        answer = await stream.wait_async()
        return responses.completion(answer.text, answer=answer)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        stream = await asyncio.to_thread(self._completion_stream, prompt, formatted, kwargs)
        return responses.astream_responses(stream, responses.completion)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        stream = await asyncio.to_thread(self._chat_stream, messages, kwargs)
        answer = await stream.wait_async()
        return responses.chat(answer.text, answer=answer)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        stream = await asyncio.to_thread(self._chat_stream, messages, kwargs)
        return responses.astream_responses(stream, responses.chat)

    # -- function calling ---------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The `chat` keywords of a chat with `tools`: the messages (`chat_history`, then
        `user_msg`), the tools in OpenAI's function format (none for an empty list) and the
        `tool_choice`: as given (a tool's name, 'auto', 'none', 'required' or OpenAI's dict),
        else 'required' when `tool_required`, else the engine's 'auto'. Other keywords (such as
        `context` and decoding settings) go with them."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        if tool_choice is None and tool_required:
            tool_choice = "required"
        return {
            "messages": messages,
            "tools": openai_tools(tools) or None,
            "tool_choice": tool_choice,
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """The response, with its first call alone unless parallel calls are allowed."""
        return response if allow_parallel_tool_calls else first_call_only(response)

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The calls of a chat response (its `ToolCallBlock`s) as `ToolSelection`s;
        `ValueError` when it makes none and `error_on_no_tool_call`."""
        return tool_selections(response, error_on_no_tool_call)

    # -- structured output: constrained decoding ----------------------------------------------

    def template_request(
        self, prompt: BasePromptTemplate, prompt_args: dict[str, Any], options: dict[str, Any]
    ) -> TemplateRequest:
        """`prompt` with `prompt_args` as one call with the keyword `options`: a question over
        the context argument (as `predict` sends it), else the rendered messages for a chat
        model, else the rendered prompt."""
        call = self.context_call(prompt, **prompt_args)
        if call is not None:
            return TemplateRequest(None, call.question, {**call.options, **options})
        if self.metadata.is_chat_model:
            return TemplateRequest(self._get_messages(prompt, **prompt_args), None, options)
        return TemplateRequest(None, self._get_prompt(prompt, **prompt_args), options)

    @dispatcher.span
    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """An `output_cls` instance, decoded under its JSON schema (the engine's
        `response_format`), so it always validates; a template with a context argument is
        answered over that context. This direct path replaces LlamaIndex's default for
        function-calling LLMs (a forced tool call); with `pydantic_program_mode` other than
        DEFAULT, LlamaIndex's program of that mode runs instead. `AnswerFormatError` when the
        answer reached `max_tokens` before the value was complete."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        request = self._structured_call(output_cls, prompt, llm_kwargs, prompt_args)
        return _structured_output(request.send(self))

    @dispatcher.span
    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """`structured_predict` for async callers."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        request = self._structured_call(output_cls, prompt, llm_kwargs, prompt_args)
        return _structured_output(await request.asend(self))

    def _structured_stream_call(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Model | FlexibleModel, None, None]:
        """The objects of `stream_structured_predict`: partial ones as the JSON is decoded
        (under the schema, as in `structured_predict`), the validated instance last."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super()._structured_stream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        options = structured.with_format(llm_kwargs, output_cls)
        request = self.template_request(prompt, prompt_args, options)
        return structured.partial_outputs(request.stream(self), output_cls)

    async def _structured_astream_call(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncIterator[Model | FlexibleModel]:
        """`_structured_stream_call` for `astream_structured_predict`."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super()._structured_astream_call(
                output_cls, prompt, llm_kwargs, **prompt_args
            )
        options = structured.with_format(llm_kwargs, output_cls)
        request = self.template_request(prompt, prompt_args, options)
        return structured.apartial_outputs(await request.astream(self), output_cls)

    def _structured_call(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None,
        prompt_args: dict[str, Any],
    ) -> TemplateRequest:
        """The request of a (not streamed) structured call, its start told to LlamaIndex's
        instrumentation (which `stream_structured_predict` does itself)."""
        dispatcher.event(
            LLMStructuredPredictStartEvent(
                output_cls=output_cls, template=prompt, template_args=prompt_args
            )
        )
        options = structured.with_format(llm_kwargs, output_cls)
        return self.template_request(prompt, prompt_args, options)

    # -- templates with a context: the context goes to the engine as such -------------------

    @dispatcher.span
    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        call = self.context_call(prompt, **prompt_args)
        if call is None:
            return super().predict(prompt, **prompt_args)
        dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=prompt_args))
        self._log_template_data(prompt, **prompt_args)
        output = self._parse_output(self.complete(call.question, **call.options).text)
        dispatcher.event(LLMPredictEndEvent(output=output))
        return output

    @dispatcher.span
    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenGen:
        call = self.context_call(prompt, **prompt_args)
        if call is None:
            return super().stream(prompt, **prompt_args)
        _refuse_output_parsers(self, prompt)
        self._log_template_data(prompt, **prompt_args)
        dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=prompt_args))
        return stream_completion_response_to_tokens(
            self.stream_complete(call.question, **call.options)
        )

    @dispatcher.span
    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        call = self.context_call(prompt, **prompt_args)
        if call is None:
            return await super().apredict(prompt, **prompt_args)
        dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=prompt_args))
        self._log_template_data(prompt, **prompt_args)
        completion = await self.acomplete(call.question, **call.options)
        output = self._parse_output(completion.text)
        dispatcher.event(LLMPredictEndEvent(output=output))
        return output

    @dispatcher.span
    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenAsyncGen:
        call = self.context_call(prompt, **prompt_args)
        if call is None:
            return await super().astream(prompt, **prompt_args)
        _refuse_output_parsers(self, prompt)
        self._log_template_data(prompt, **prompt_args)
        dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=prompt_args))
        completions = await self.astream_complete(call.question, **call.options)
        return await astream_completion_response_to_tokens(completions)


def _structured_output(response: ChatResponse | CompletionResponse) -> BaseModel:
    """The validated output of a structured call's response, its end told to LlamaIndex's
    instrumentation."""
    output = structured.parsed(response)
    dispatcher.event(LLMStructuredPredictEndEvent(output=output))
    return output


def _refuse_output_parsers(llm: ParallelCompLLM, prompt: BasePromptTemplate) -> None:
    """LlamaIndex's streams do not parse output (`LLM.stream` raises the same error)."""
    if prompt.output_parser is not None or llm.output_parser is not None:
        raise NotImplementedError("Output parser is not supported for streaming.")
