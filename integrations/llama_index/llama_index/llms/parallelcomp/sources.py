"""Which nodes an answer drew on: the nodes of the chunks the engine kept, with their relevance."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.schema import BaseNode, NodeWithScore

from parallelcomp_llm import Answer


def kept_nodes(nodes: Sequence[BaseNode], answer: Answer) -> list[NodeWithScore]:
    """The nodes with at least one kept chunk, most relevant first.

    `nodes[i]` is document `i` of the request. A node's score is the engine's relevance of its
    best kept chunk (higher is more relevant, as LlamaIndex's postprocessors expect). When the
    engine kept every chunk without ranking them, scores are None and nodes keep their order.
    """
    best: dict[int, float | None] = {}
    for chunk in answer.stats.chunks:
        if not chunk.kept:
            continue
        for document in chunk.documents:
            known = best.get(document)
            if document not in best or (known is not None and chunk.relevance > known):
                best[document] = chunk.relevance
    order = sorted(best, key=lambda document: -(best[document] or 0.0))
    return [NodeWithScore(node=nodes[document], score=best[document]) for document in order]
