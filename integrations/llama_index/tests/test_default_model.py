"""The default model answers a passkey question over nodes longer than its trained window."""

from __future__ import annotations

from itertools import pairwise

import pytest
from llama_index.core import SummaryIndex
from llama_index.core.schema import TextNode
from llama_index.llms.parallelcomp import LongContextQueryEngine, ParallelCompLLM

from parallelcomp_llm import ParallelCompEngine
from parallelcomp_llm.testing import (
    PASSKEY_NOISE,
    PASSKEY_QUESTION,
    first_integer,
    passkey_haystack,
)

KEY = 68217


def _split(text: str, parts: int) -> list[str]:
    """`text` cut into `parts` pieces of about equal length, at the start of a noise sentence."""
    cuts = (
        [0]
        + [text.find(PASSKEY_NOISE, len(text) * k // parts) for k in range(1, parts)]
        + [len(text)]
    )
    return [text[start:end] for start, end in pairwise(cuts)]


@pytest.mark.default_model
def test_passkey_over_nodes_longer_than_the_trained_window():
    engine = ParallelCompEngine.default(keep_chunks=2)
    llm = ParallelCompLLM(engine=engine, max_new_tokens=16)
    # Three nodes of about 4,100 tokens: too long to share a chunk, so 3 chunks, 2 kept.
    haystack = passkey_haystack(12_300, 0.8, KEY, engine.count_tokens)
    nodes = [TextNode(text=text, id_=f"part-{i}") for i, text in enumerate(_split(haystack, 3))]
    needle = next(node.node_id for node in nodes if str(KEY) in node.text)
    assert needle == "part-2"
    assert sum(engine.count_tokens(node.text) for node in nodes) > engine.native_window == 8192

    query_engine = LongContextQueryEngine.from_index(SummaryIndex(nodes), llm=llm)
    response = query_engine.query(PASSKEY_QUESTION)

    assert first_integer(response.response) == KEY
    assert needle in [source.node.node_id for source in response.source_nodes]
    assert len(response.source_nodes) == 2
    assert all(source.score is not None for source in response.source_nodes)
