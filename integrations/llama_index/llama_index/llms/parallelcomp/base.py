"""`ParallelCompLLM`: a LlamaIndex `CustomLLM` over a `ParallelCompEngine`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation.events.llm import LLMPredictEndEvent, LLMPredictStartEvent
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import (
    astream_completion_response_to_tokens,
    stream_completion_response_to_tokens,
)
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import TokenAsyncGen, TokenGen
from transformers import PreTrainedTokenizerBase

from parallelcomp_llm import AnswerStream, DecodeSettings, ParallelCompEngine

from . import responses
from .framing import CONTEXT_MARK, ContextCall, context_variable, cut_at_context

dispatcher = instrument.get_dispatcher(__name__)

DECODING_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
"""The fields that are the engine's `DecodeSettings` of every call (validated by it)."""
RENAMES = {"max_tokens": "max_new_tokens"}
"""LlamaIndex's usual names of the engine's decoding settings."""


class ParallelCompLLM(CustomLLM):
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

    Per-call keyword arguments: `context`; with it, `system_prompt` (every chunk's system turn;
    the field of that name is LlamaIndex's, which `predict` puts in front of its templates);
    `max_tokens` (or `max_new_tokens`), `temperature`, `top_p`, `top_k`, `seed`, `stop`,
    `ignore_eos` (the engine's `DecodeSettings`, over the fields of the same names). Final
    responses (for streams: the last one) have a `raw` dict with the token `usage` and the
    engine's `answer` (`responses`).

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
        context = kwargs.pop("context", None)
        turns = [
            {"role": message.role.value, "content": message.content or ""} for message in messages
        ]
        return self._engine.stream_chat(turns, self._settings(kwargs), context=context)

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
        answer = self._chat_stream(messages, kwargs).wait()
        return responses.chat(answer.text, answer=answer)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return responses.stream_responses(self._chat_stream(messages, kwargs), responses.chat)

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


def _refuse_output_parsers(llm: ParallelCompLLM, prompt: BasePromptTemplate) -> None:
    """LlamaIndex's streams do not parse output (`LLM.stream` raises the same error)."""
    if prompt.output_parser is not None or llm.output_parser is not None:
        raise NotImplementedError("Output parser is not supported for streaming.")
