"""Exception classes raised by parallelcomp-llm for user-facing failures."""

from __future__ import annotations


class ParallelCompError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(ParallelCompError, ValueError):
    """A question, context, file or per-call argument that cannot be used."""


class InvalidConfigError(ParallelCompError, ValueError):
    """Settings that are out of bounds or do not fit the model."""


class ContextTooLongError(InvalidInputError):
    """The context has more tokens than the configured hard limit (`max_context_tokens`)."""


class UnsupportedModelError(ParallelCompError):
    """The model's architecture is not one the engine supports."""


class ModelDownloadError(ParallelCompError):
    """The embedded default model could not be fetched, verified or converted."""
