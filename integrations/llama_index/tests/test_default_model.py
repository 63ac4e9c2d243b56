"""The default model finds a pass key in text longer than its trained window: through
`LongContextQueryEngine` over nodes, and through each of LlamaIndex's own query and chat engines
(the `pipeline`s of the tiny tests) over a corpus of three trained windows.

One engine serves the module and answers are short. The corpus is one node, so that the response
modes that ask the same question over the same text (compact, refine and simple_summarize) reuse
its encoding.
"""

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


@pytest.fixture(scope="module")
def default_llm() -> ParallelCompLLM:
    return ParallelCompLLM(engine=ParallelCompEngine.default(keep_chunks=2), max_new_tokens=12)


@pytest.fixture(scope="module")
def corpus(default_llm) -> str:
    """A pass-key haystack of three trained windows (24,576 tokens), the key at 80% depth."""
    engine = default_llm.engine
    window = engine.native_window
    text = passkey_haystack(3 * window + 100, 0.8, KEY, engine.count_tokens).strip()
    assert engine.count_tokens(text) >= 3 * window == 3 * 8192
    return text


def _split(text: str, parts: int) -> list[str]:
    """`text` cut into `parts` pieces of about equal length, at the start of a noise sentence."""
    cuts = (
        [0]
        + [text.find(PASSKEY_NOISE, len(text) * k // parts) for k in range(1, parts)]
        + [len(text)]
    )
    return [text[start:end] for start, end in pairwise(cuts)]


@pytest.mark.default_model
def test_passkey_over_nodes_longer_than_the_trained_window(default_llm):
    engine = default_llm.engine
    # Three nodes of about 4,100 tokens: too long to share a chunk, so 3 chunks, 2 kept.
    haystack = passkey_haystack(12_300, 0.8, KEY, engine.count_tokens)
    nodes = [TextNode(text=text, id_=f"part-{i}") for i, text in enumerate(_split(haystack, 3))]
    needle = next(node.node_id for node in nodes if str(KEY) in node.text)
    assert needle == "part-2"
    assert sum(engine.count_tokens(node.text) for node in nodes) > engine.native_window == 8192

    query_engine = LongContextQueryEngine.from_index(SummaryIndex(nodes), llm=default_llm)
    response = query_engine.query(PASSKEY_QUESTION)

    assert first_integer(response.response) == KEY
    assert needle in [source.node.node_id for source in response.source_nodes]
    assert len(response.source_nodes) == 2
    assert all(0.0 < source.score < 1.0 for source in response.source_nodes)


@pytest.mark.default_model
def test_passkey_through_llama_indexs_engines(default_llm, corpus, pipeline, llm_answers):
    index = SummaryIndex([TextNode(text=corpus, id_="corpus")])

    answer = pipeline(index, default_llm, corpus, PASSKEY_QUESTION)

    calls = [(a.text, a.stats.chunks_total, a.stats.context_cache_hit) for a in llm_answers()]
    assert first_integer(answer) == KEY, (answer, calls)
