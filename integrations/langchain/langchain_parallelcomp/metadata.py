"""What LangChain reports about an `Answer`: finish reason, model, token usage, kept documents
with their relevance."""

from __future__ import annotations

from typing import Any

from langchain_core.messages.ai import UsageMetadata

from parallelcomp_llm import Answer


def input_tokens(answer: Answer) -> int:
    """Tokens the caller supplied: the whole context plus the prompt (or question block).

    `stats.prompt_tokens` counts the merged KV entries the answer was decoded over
    (`kv_entries_kept`) plus the question block; the context is counted in full instead.
    """
    stats = answer.stats
    return stats.context_tokens + stats.prompt_tokens - stats.kv_entries_kept


def usage_metadata(answer: Answer) -> UsageMetadata:
    """LangChain's usage record of one answer."""
    supplied, new = input_tokens(answer), answer.stats.new_tokens
    return UsageMetadata(input_tokens=supplied, output_tokens=new, total_tokens=supplied + new)


def kept_document_relevance(answer: Answer) -> list[float]:
    """The relevance of each of `answer.stats.kept_documents`, in that order (0 to 1, higher is
    more relevant)."""
    best = answer.stats.document_relevance
    return [best[document] for document in answer.stats.kept_documents]


def answer_metadata(answer: Answer, model_name: str) -> dict[str, Any]:
    """Response metadata / generation info of one answer. `kept_documents` are indices into the
    engine's documents: the caller's context first, then any the engine cut from the prompt."""
    stats = answer.stats
    return {
        "model_name": model_name,
        "model_provider": "parallelcomp",
        "finish_reason": answer.finish_reason,
        "context_tokens": stats.context_tokens,
        "chunks_total": stats.chunks_total,
        "chunks_kept": stats.chunks_kept,
        "kept_documents": stats.kept_documents,
        "kept_document_relevance": kept_document_relevance(answer),
    }
