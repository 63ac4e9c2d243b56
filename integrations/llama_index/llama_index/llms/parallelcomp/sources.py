"""Which nodes an answer drew on: the nodes of the chunks the engine kept, with their scores."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.schema import BaseNode, NodeWithScore

from parallelcomp_llm import Answer


def kept_nodes(nodes: Sequence[BaseNode], answer: Answer) -> list[NodeWithScore]:
    """The nodes with at least one kept chunk, most relevant first.

    `nodes[i]` is document `i` of the request. A node's score is the engine's score of its best
    kept chunk, read as `answer.stats.score_kind` says: 'nll' (lower is more relevant) or
    'attention' (higher is more relevant). When the engine kept every chunk without scoring
    them, scores are None and nodes keep their order.
    """
    kind = answer.stats.score_kind
    best: dict[int, float | None] = {}
    for chunk in answer.stats.chunks:
        if not chunk.kept:
            continue
        for document in chunk.documents:
            if document not in best or _better(chunk.score, best[document], kind):
                best[document] = chunk.score
    order = sorted(best, key=lambda document: _rank(best[document], kind))
    return [NodeWithScore(node=nodes[document], score=best[document]) for document in order]


def _better(score: float | None, than: float | None, kind: str | None) -> bool:
    return score is not None and than is not None and _rank(score, kind) < _rank(than, kind)


def _rank(score: float | None, kind: str | None) -> float:
    """Sort key: smaller is more relevant."""
    if score is None or kind is None:
        return 0.0
    return score if kind == "nll" else -score
