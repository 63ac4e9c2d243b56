"""`ParallelCompSettings`: pydantic fields and engine handling shared by the LLM and chat model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Self

from langchain_core.language_models import LangSmithParams
from pydantic import BaseModel, ConfigDict, Field, model_validator

from parallelcomp_llm import (
    AnswerStream,
    DecodeSettings,
    InvalidInputError,
    ParallelCompConfig,
    ParallelCompEngine,
)

from .context import engine_context

RENAMES = {"max_tokens": "max_new_tokens"}
"""LangChain's names of the engine's decoding settings."""

OpenStream = Callable[[], AnswerStream]
"""Starts one engine request; called where the model work runs (a worker thread when async)."""


class ParallelCompSettings(BaseModel):
    """Which engine answers, and the default decoding settings of every call.

    The decoding fields are those of `parallelcomp_llm.DecodeSettings` (with LangChain's
    `max_tokens` for its `max_new_tokens`), validated by it; None leaves the engine's default.
    A call may pass any of them, and `context=`, as keyword arguments.
    """

    model: str | None = None
    """Model name or local path for `ParallelCompEngine.from_pretrained` (Llama, Qwen2 or Mistral
    architecture). None, with no `engine`: the embedded default model, SmolLM2-135M-Instruct."""

    config: ParallelCompConfig | None = None
    """Engine settings (chunking, eviction, calibration, device, ...) for the model loaded from
    `model`. None: the engine's defaults."""

    engine: ParallelCompEngine | None = Field(default=None, exclude=True)
    """An engine built beforehand (instead of `model` and `config`); several LangChain objects may
    share one. Filled in with the loaded engine otherwise."""

    max_tokens: int | None = None
    """Most new tokens per answer. None: the engine's `answer_reserve_tokens`."""

    temperature: float | None = None
    """Sampling temperature; 0 (the default) is greedy decoding."""

    top_p: float | None = None
    """Nucleus sampling mass (when sampling)."""

    top_k: int | None = None
    """Sample among the `top_k` most likely tokens (when sampling)."""

    seed: int | None = None
    """Seed of the sampler, for reproducible sampling."""

    stop: list[str] | None = None
    """Default stop sequences: the output is cut before the first one. A call's `stop` replaces
    them."""

    streaming: bool = False
    """Generate through the streaming path (token callbacks) also on `invoke`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @model_validator(mode="after")
    def _load_parallelcomp_engine(self) -> Self:
        try:
            self._decode_settings({})
        except InvalidInputError as error:  # pydantic reports a ValueError as a ValidationError
            raise ValueError(str(error)) from None
        if self.engine is not None:
            if self.model is not None or self.config is not None:
                raise ValueError("pass either `engine` or `model`/`config`, not both")
        elif self.model is not None:
            self.engine = ParallelCompEngine.from_pretrained(self.model, self.config)
        else:
            self.engine = ParallelCompEngine.default(self.config)
        return self

    @model_validator(mode="after")
    def _set_parallelcomp_version(self) -> Self:
        try:
            self._add_version("langchain-parallelcomp", version("langchain-parallelcomp"))
        except PackageNotFoundError:
            pass
        return self

    @property
    def model_name(self) -> str:
        """The model's name: `model` when given, else the engine model's folder name or type."""
        if self.model is not None:
            return self.model
        loaded = self.engine.model
        return Path(loaded.name_or_path).name or loaded.config.model_type

    @property
    def context_window(self) -> int:
        """Most tokens a call may bring, as context or as a long prompt (the engine's
        `context_window`, `max_context_tokens`); what `profile["max_input_tokens"]` declares."""
        return self.engine.context_window

    @property
    def native_window(self) -> int:
        """The model's trained window, in tokens: longer prompts are answered with ParallelComp."""
        return self.engine.native_window

    @property
    def _default_params(self) -> dict[str, Any]:
        """Decoding settings sent with every call (None: the engine's default)."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
        }

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return {
            "model_name": self.model_name,
            **self._default_params,
            "engine_config": self.engine.config.model_dump(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop if stop is not None else self.stop, **kwargs)
        params["ls_provider"] = "parallelcomp"
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` in the model's own tokenizer (no special tokens added)."""
        return self.engine.prompts.encode(text)

    def _decode_settings(self, call: Mapping[str, Any]) -> DecodeSettings:
        """The fields' settings with a call's keywords over them, validated by the engine's
        `DecodeSettings` (unknown keywords are refused)."""
        fields = self._default_params | {"stop": self.stop}
        return DecodeSettings.from_fields(fields, call, RENAMES)

    def _call_settings(
        self, stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> tuple[Any, DecodeSettings]:
        """Split a call's keywords into the engine context (None when not given) and its
        decoding settings."""
        call = {name: value for name, value in kwargs.items() if name != "context"}
        if stop is not None:
            call["stop"] = stop
        context = kwargs.get("context")
        return (None if context is None else engine_context(context)), self._decode_settings(call)
