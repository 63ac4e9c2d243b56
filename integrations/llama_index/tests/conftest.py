"""Fixtures: a tiny random engine (trained window 512 tokens), the LLM over it, and nodes."""

from __future__ import annotations

import pytest
from llama_index.core.schema import TextNode
from llama_index.llms.parallelcomp import ParallelCompLLM

from parallelcomp_llm.testing import text_of_tokens, tiny_engine


@pytest.fixture(scope="module")
def engine():
    """Keeps 2 chunks; chunks hold about 426 tokens; context is refused above 5,000 tokens."""
    return tiny_engine("llama", keep_chunks=2, max_context_tokens=5000)


@pytest.fixture
def llm(engine) -> ParallelCompLLM:
    return ParallelCompLLM(engine=engine)


@pytest.fixture
def nodes() -> list[TextNode]:
    """Two small nodes (packed into one chunk), then three nodes of a chunk each: 4 chunks, 1,100
    tokens, more than twice the trained window."""
    sizes = [100, 100, 300, 300, 300]
    return [
        TextNode(text=text_of_tokens(size, seed=index), id_=f"node-{index}")
        for index, size in enumerate(sizes)
    ]
