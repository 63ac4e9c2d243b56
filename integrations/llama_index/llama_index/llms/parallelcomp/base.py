"""`ParallelCompLLM`: a LlamaIndex `CustomLLM` over a `ParallelCompEngine`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from transformers import PreTrainedTokenizerBase

from parallelcomp_llm import AnswerStream, DecodeSettings, InvalidInputError, ParallelCompEngine

from . import responses

DECODING_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
"""The fields that are the engine's `DecodeSettings` of every call (validated by it)."""
RENAMES = {"max_tokens": "max_new_tokens"}
"""LlamaIndex's usual names of the engine's decoding settings."""


class ParallelCompLLM(CustomLLM):
    """A LlamaIndex LLM that answers over far more text than the model's trained window.

    `complete` and `chat` behave like any local LLM (`chat` applies the model's chat template).
    Pass `context=` (a text or a list of documents) to either of them and the engine answers the
    prompt, or the chat's single user message, over that context with ParallelComp: this is what
    `LongContextQueryEngine` does with an index's nodes. `metadata.context_window` is the window
    the engine accepts as context (`max_context_tokens`), not the model's trained window; a prompt
    without `context=` must fit the trained window (`engine.native_window`).

    Per-call keyword arguments: `context`, `max_tokens` (or `max_new_tokens`), `temperature`,
    `top_p`, `top_k`, `seed`, `stop`, `ignore_eos` (the engine's `DecodeSettings`); they override
    the fields of the same names for one call.
    Streams end with a response whose `raw` is the engine's `Answer`; so do plain responses.

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
        settings = self._settings(kwargs)
        if context is not None:
            return self._engine.stream(context, prompt, settings)
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        return self._engine.stream_complete(prompt, settings)

    def _chat_stream(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> AnswerStream:
        context = kwargs.pop("context", None)
        settings = self._settings(kwargs)
        turns = [
            {"role": message.role.value, "content": message.content or ""} for message in messages
        ]
        if context is None:
            return self._engine.stream_chat(turns, settings)
        if len(turns) != 1 or turns[0]["role"] != MessageRole.USER.value:
            raise InvalidInputError(
                "with context=, the chat must be one user message (the question); "
                f"got {[turn['role'] for turn in turns]}"
            )
        return self._engine.stream(context, turns[0]["content"], settings)

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
