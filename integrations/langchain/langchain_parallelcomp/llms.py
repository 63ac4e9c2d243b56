"""`ParallelCompLLM`: a LangChain `BaseLLM` over a `ParallelCompEngine`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from parallelcomp_llm import Answer

from .metadata import answer_metadata, input_tokens
from .settings import OpenStream, ParallelCompSettings
from .streams import aanswer_events, answer_events


class ParallelCompLLM(ParallelCompSettings, BaseLLM):
    """Text completion with an open-weight model, over contexts far beyond its trained window.

    Without `context`, the prompt is continued as by any local LLM (no chat template; the prompt
    must fit the trained window). With `context=` (a text, or a list of texts or `Document`s,
    e.g. through `llm.bind(context=docs)`), the prompt is the question and the engine answers it
    over the whole context with ParallelComp, document boundaries kept as chunk boundaries.

    Example:
        ```python
        from langchain_parallelcomp import ParallelCompLLM

        llm = ParallelCompLLM(max_tokens=64)  # SmolLM2-135M-Instruct, fetched once
        llm.invoke("What is the pass key?", context=[report, notes, minutes])
        ```
    """

    @property
    def _llm_type(self) -> str:
        return "parallelcomp"

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
