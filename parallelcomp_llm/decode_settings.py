"""`DecodeSettings`: how one request decodes (length, stop strings, sampling, EOS), validated once.

The engine, the command line and both integrations take decoding settings through this one model
(vLLM's `SamplingParams` is the pattern); the integrations only rename their frameworks' names
(`max_tokens`) to these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator

from .errors import CheckedModel, InvalidInputError
from .response_format import ResponseFormat

MIN_TEMPERATURE = 1e-5
"""Smallest sampling temperature; lower ones overflow the logits (0 is greedy decoding)."""
MAX_STOP_STRINGS = 64
"""Most stop strings a request may give."""
MAX_STOP_CHARACTERS = 1000
"""Longest stop string, in characters."""


class DecodeSettings(CheckedModel):
    """Decoding settings of one request. Types are strict (no bool for an int, no string for a
    number); bad values raise `InvalidInputError` before any model work."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    refusal = InvalidInputError

    max_new_tokens: Annotated[int, Field(ge=1)] | None = None
    """Most tokens to generate. None: the engine's `answer_reserve_tokens`."""
    stop: tuple[str, ...] = ()
    """Strings that end the answer (a string or a list; not included in the answer)."""
    temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    """0 decodes greedily; otherwise at least `MIN_TEMPERATURE`."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (when sampling)."""
    top_k: Annotated[int, Field(ge=1)] | None = None
    """Sample among the `top_k` most likely tokens (when sampling)."""
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    """Seed of the sampler, for reproducible sampling."""
    ignore_eos: bool = False
    """Go on past the end-of-sequence tokens, up to `max_new_tokens` (for benchmarks); an answer
    with a `response_format` still ends where its value is complete."""
    response_format: ResponseFormat | None = None
    """What the answer must be (constrained decoding): a pydantic model class, a JSON schema,
    OpenAI's `response_format` dict, or a `ResponseFormat`; `Answer.parsed()` reads it."""

    @field_validator("response_format", mode="before")
    @classmethod
    def _response_format(cls, value: object) -> ResponseFormat | None:
        return ResponseFormat.of(value)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, stop: object) -> object:
        if stop is None:
            return ()
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError("stop must be a string or a list of non-empty strings")
        if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARACTERS for s in stop):
            raise ValueError(
                f"at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_CHARACTERS} "
                "characters each (every one is matched after every token)"
            )
        return tuple(stop)

    @field_validator("temperature")
    @classmethod
    def _usable_temperature(cls, temperature: float) -> float:
        if 0.0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return float(temperature)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_fields(
        cls,
        fields: Mapping[str, Any],
        call: Mapping[str, Any],
        renames: Mapping[str, str] | None = None,
    ) -> DecodeSettings:
        """The settings an integration's object holds as `fields` (None: not set, the default),
        with one call's keywords over them; both may use the framework's names (`renames`)."""
        given = {name: value for name, value in fields.items() if value is not None}
        return cls.of(call, base=cls.of(given, renames=renames), renames=renames)

    @classmethod
    def for_call(
        cls,
        settings: object,
        options: Mapping[str, Any],
        default_max_new_tokens: int,
        max_new_tokens_limit: int | None,
    ) -> DecodeSettings:
        """A call's settings: `settings` (None or a `DecodeSettings`) with the keyword `options`
        over it, `max_new_tokens` defaulting to `default_max_new_tokens` and at most
        `max_new_tokens_limit`."""
        if settings is not None and not isinstance(settings, DecodeSettings):
            raise InvalidInputError(
                f"settings must be DecodeSettings, got {type(settings).__name__}"
            )
        decoding = cls.of(options, base=settings)
        if decoding.max_new_tokens is None:
            decoding = cls.of({"max_new_tokens": default_max_new_tokens}, base=decoding)
        limit = max_new_tokens_limit
        if limit is not None and decoding.max_new_tokens > limit:
            raise InvalidInputError(
                f"max_new_tokens={decoding.max_new_tokens} is over this engine's limit of {limit}"
            )
        return decoding

    @classmethod
    def of(
        cls,
        options: Mapping[str, Any],
        base: DecodeSettings | None = None,
        renames: Mapping[str, str] | None = None,
    ) -> DecodeSettings:
        """`base` (default: the defaults) with `options` over it, after renaming a framework's
        names (`renames`, e.g. {"max_tokens": "max_new_tokens"}). Unknown names, and a name given
        twice under two names, raise `InvalidInputError`."""
        renames = renames or {}
        accepted = sorted({*cls.model_fields, *renames})
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise InvalidInputError(
                f"unexpected keyword arguments {unknown}; decoding settings: {', '.join(accepted)}"
            )
        renamed: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for name, value in options.items():
            target = renames.get(name, name)
            if target in renamed:
                raise InvalidInputError(f"{target} given twice, as {spelled[target]} and as {name}")
            renamed[target], spelled[target] = value, name
        return cls(**((dict(base) if base else {}) | renamed))
