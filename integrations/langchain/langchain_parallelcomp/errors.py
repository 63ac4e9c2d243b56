"""The engine's errors as LangChain knows them: a context over the engine's limit is also
LangChain's `ContextOverflowError`, as LangChain's partner packages map their providers' errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from langchain_core.exceptions import ContextOverflowError

from parallelcomp_llm import ContextTooLongError


class ParallelCompContextOverflowError(ContextTooLongError, ContextOverflowError):
    """The context (or long prompt) has more tokens than the engine accepts (`max_context_tokens`,
    `profile["max_input_tokens"]`). Catch it as either base class: LangChain's middleware and
    fallbacks see a context overflow, code written for the engine its `ContextTooLongError`."""


@contextmanager
def langchain_errors() -> Iterator[None]:
    """Raise the engine's `ContextTooLongError` from the enclosed call as
    `ParallelCompContextOverflowError` (same message, the original as its cause)."""
    try:
        yield
    except ContextTooLongError as error:
        if isinstance(error, ContextOverflowError):
            raise
        raise ParallelCompContextOverflowError(str(error)) from error
