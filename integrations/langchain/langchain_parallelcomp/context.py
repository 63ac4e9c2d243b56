"""Turn the `context=` keyword (a text, or a list of texts and `Document`s) into engine context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document

ContextInput = str | Document | Sequence[str | Document]
"""What `context=` accepts: one text or `Document`, or a list of them (one engine document each)."""


def engine_context(context: ContextInput) -> Any:
    """The engine's `context` argument for `context`: `Document`s become their `page_content`.

    Anything else is passed through unchanged, so wrong types and empty documents reach the
    engine, which refuses them with its own `InvalidInputError`.
    """
    if isinstance(context, Document):
        return [context.page_content]
    if isinstance(context, Sequence) and not isinstance(context, (str, bytes, bytearray)):
        return [item.page_content if isinstance(item, Document) else item for item in context]
    return context
