"""`ParallelCompLLM`: a LangChain `BaseLLM` over a `ParallelCompEngine`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
    Callbacks,
)
from langchain_core.language_models import BaseLLM, LanguageModelInput
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig
from pydantic import PrivateAttr

from parallelcomp_llm import Answer, DecodeSettings

from .context import ContextInput, identified
from .errors import langchain_errors
from .metadata import answer_metadata, input_tokens
from .settings import OpenStream, ParallelCompSettings
from .streams import aanswer_events, answer_events


class ParallelCompLLM(ParallelCompSettings, BaseLLM):
    """Text completion with an open-weight model, over contexts far beyond its trained window.

    Without `context`, the prompt goes to the engine's `stream_complete`: continued as by any local
    LLM (no chat template) when it fits the trained window, else answered with ParallelComp, cut
    into context and question by the rule of `parallelcomp_llm.long_prompt`. With `context=` (a
    text, or a list of texts or `Document`s, e.g. through `llm.bind(context=docs)`), the prompt is
    the question and the engine answers it over the whole context with ParallelComp, document
    boundaries kept as chunk boundaries and a `Document`'s title and source shown in front of its
    text. Several prompts over one context run as one engine batch.

    `context_window` is what the engine accepts (`max_context_tokens`); `native_window` is the
    trained window. A longer input raises `ParallelCompContextOverflowError` (the engine's
    `ContextTooLongError` and LangChain's `ContextOverflowError`). The context is identified by its
    digest in invocation params and the LLM cache key, never inlined.

    Example:
        ```python
        from langchain_parallelcomp import ParallelCompLLM

        llm = ParallelCompLLM(max_tokens=64)  # SmolLM2-135M-Instruct, fetched once
        llm.invoke("What is the pass key?", context=[report, notes, minutes])
        ```
    """

    _context: ContextInput | None = PrivateAttr(None)
    """The context of the one call this copy runs (see `_holding`)."""

    @property
    def _llm_type(self) -> str:
        return "parallelcomp"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        params = super()._identifying_params
        return params if self._context is None else identified({**params, "context": self._context})

    def _holding(self, kwargs: dict[str, Any]) -> tuple[ParallelCompLLM, dict[str, Any]]:
        """This model for one call, and the call's other keywords: LangChain's `BaseLLM` keys its
        cache on the model's identifying params alone (langchain-ai/langchain#40403) and puts a
        stream's keywords in its invocation params as given, so a call's `context` runs on a copy
        that holds it and is identified by its digest."""
        if kwargs.get("context") is None:
            return self, kwargs
        model = self.model_copy()
        model._context = kwargs["context"]
        return model, {name: value for name, value in kwargs.items() if name != "context"}

    def generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        **kwargs: Any,
    ) -> LLMResult:
        model, kwargs = self._holding(kwargs)
        return BaseLLM.generate(model, prompts, stop, callbacks, **kwargs)

    async def agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        **kwargs: Any,
    ) -> LLMResult:
        model, kwargs = self._holding(kwargs)
        return await BaseLLM.agenerate(model, prompts, stop, callbacks, **kwargs)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        model, kwargs = self._holding(kwargs)
        yield from BaseLLM.stream(model, input, config, stop=stop, **kwargs)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        model, kwargs = self._holding(kwargs)
        async for chunk in BaseLLM.astream(model, input, config, stop=stop, **kwargs):
            yield chunk

    def _call_settings(
        self, stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> tuple[Any, DecodeSettings]:
        if self._context is None:
            return super()._call_settings(stop, kwargs)
        return super()._call_settings(stop, {**kwargs, "context": self._context})

    def _open(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> OpenStream:
        context, decoding = self._call_settings(stop, kwargs)
        if context is None:
            return lambda: self.engine.stream_complete(prompt, decoding)
        return lambda: self.engine.stream(context, prompt, decoding)

    def _one_batch(
        self, prompts: list[str], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Callable[[], list[Answer]] | None:
        """Several questions over one bound context run as one engine batch (shared encoding,
        batched decoding); None when the prompts are to run one by one."""
        context, decoding = self._call_settings(stop, kwargs)
        if context is None or len(prompts) < 2 or self.streaming:
            return None
        return lambda: self.engine.generate_batch(context, prompts, decoding)

    def _generation(self, answer: Answer) -> Generation:
        return Generation(
            text=answer.text, generation_info=answer_metadata(answer, self.model_name)
        )

    def _last_chunk(self, answer: Answer) -> GenerationChunk:
        """The closing chunk of a stream: no text, the answer's metadata."""
        return GenerationChunk(text="", generation_info=answer_metadata(answer, self.model_name))

    def _result(self, answers: list[Answer]) -> LLMResult:
        prompt_tokens = sum(input_tokens(answer) for answer in answers)
        completion_tokens = sum(answer.stats.new_tokens for answer in answers)
        return LLMResult(
            generations=[[self._generation(answer)] for answer in answers],
            llm_output={
                "model_name": self.model_name,
                "token_usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        batch = self._one_batch(prompts, stop, kwargs)
        if batch is not None:
            with langchain_errors():
                return self._result(batch())
        answers = []
        for prompt in prompts:
            for event in answer_events(self._open(prompt, stop, kwargs)):
                if isinstance(event, Answer):
                    answers.append(event)
                elif self.streaming and run_manager:
                    run_manager.on_llm_new_token(event)
        return self._result(answers)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        batch = self._one_batch(prompts, stop, kwargs)
        if batch is not None:
            with langchain_errors():
                return self._result(await asyncio.to_thread(batch))
        answers = []
        for prompt in prompts:
            async for event in aanswer_events(self._open(prompt, stop, kwargs)):
                if isinstance(event, Answer):
                    answers.append(event)
                elif self.streaming and run_manager:
                    await run_manager.on_llm_new_token(event)
        return self._result(answers)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for event in answer_events(self._open(prompt, stop, kwargs)):
            if isinstance(event, Answer):
                chunk = self._last_chunk(event)
            else:
                chunk = GenerationChunk(text=event)
                if run_manager:
                    run_manager.on_llm_new_token(event, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        async for event in aanswer_events(self._open(prompt, stop, kwargs)):
            if isinstance(event, Answer):
                chunk = self._last_chunk(event)
            else:
                chunk = GenerationChunk(text=event)
                if run_manager:
                    await run_manager.on_llm_new_token(event, chunk=chunk)
            yield chunk
