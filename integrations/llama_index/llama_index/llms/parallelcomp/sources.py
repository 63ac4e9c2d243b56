"""Which nodes an answer drew on: the nodes of the chunks the engine kept, with their relevance."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.schema import BaseNode, NodeWithScore

from parallelcomp_llm import Answer


def kept_nodes(nodes: Sequence[BaseNode], answer: Answer) -> list[NodeWithScore]:
    """The nodes with at least one kept chunk, most relevant first (ties in document order).

    `nodes[i]` is document `i` of the request. A node's score is the relevance of its best kept
    chunk: the engine's probability-like share, from 0 to 1 and higher for more relevant, as
    LlamaIndex's postprocessors expect (1.0 when the context was one chunk).
    """
    best = answer.stats.document_relevance
    order = sorted(best, key=lambda document: (-best[document], document))
    return [NodeWithScore(node=nodes[document], score=best[document]) for document in order]
