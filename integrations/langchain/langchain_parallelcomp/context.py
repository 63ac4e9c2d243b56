"""Turn the `context=` keyword (a text, or a list of texts and `Document`s) into engine context,
and identify it by digest in LangChain's invocation params and cache keys.

A `Document` reaches the model as its metadata's title and source (when present) in front of its
text, in this format:

    Title: <metadata["title"]>
    Source: <metadata["source"]>

    <page_content>
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document

from parallelcomp_llm import ContextCache

ContextInput = str | Document | Sequence[str | Document] | ContextCache
"""What `context=` accepts: one text or `Document`, a list of them (one engine document each), or
a `ContextCache` encoded by the same engine."""

HEADER_FIELDS = ("title", "source")
"""The `Document.metadata` keys shown to the model, in this order, as `Key: value` lines."""


def document_text(document: Document) -> str:
    """The text the model reads for `document`: its header (title, source) and its content.

    A document without text stays blank, so that the engine refuses a context of blank documents.
    """
    lines = [
        f"{key.capitalize()}: {document.metadata[key]}"
        for key in HEADER_FIELDS
        if str(document.metadata.get(key) or "").strip()
    ]
    if not lines or not document.page_content.strip():
        return document.page_content
    return "\n".join(lines) + "\n\n" + document.page_content


def engine_context(context: ContextInput) -> Any:
    """The engine's `context` argument for `context`: `Document`s become `document_text`.

    Anything else is passed through unchanged, so wrong types and empty documents reach the
    engine, which refuses them with its own `InvalidInputError`.
    """
    if isinstance(context, Document):
        return [document_text(context)]
    if isinstance(context, Sequence) and not isinstance(context, (str, bytes, bytearray)):
        return [document_text(item) if isinstance(item, Document) else item for item in context]
    return context


def context_digest(context: ContextInput) -> str:
    """`"sha256:<hex>"` over the texts the model reads for `context` (each length-prefixed), for
    invocation params and cache keys; a `ContextCache` is named by its own key. Never raises, so
    that a bad context reaches the engine's checks."""
    if isinstance(context, ContextCache):
        return f"context-cache:{context.context_key}"
    texts = engine_context(context)
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        texts = [repr(texts)]
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    return f"sha256:{digest.hexdigest()}"


def identified(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call's keywords as LangChain records them (invocation params, cache key): the context by
    its `context_digest`."""
    if kwargs.get("context") is None:
        return kwargs
    return {**kwargs, "context": context_digest(kwargs["context"])}
