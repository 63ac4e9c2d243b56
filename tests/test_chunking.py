"""Chunking invariants: every token once and in order, sizes within the window, documents kept whole."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parallelcomp_llm.chunking import split_into_chunks
from parallelcomp_llm.testing import text_of_tokens, tiny_engine

SEP = [-1]


def rebuild(chunks) -> list[list[int]]:
    """Document token lists recovered from chunk spans."""
    found: dict[int, list[tuple[int, list[int]]]] = {}
    for chunk in chunks:
        for span in chunk.spans:
            piece = chunk.token_ids[span.offset : span.offset + span.end - span.start]
            found.setdefault(span.document, []).append((span.start, piece))
    return {doc: [t for _, piece in sorted(parts) for t in piece] for doc, parts in found.items()}


@given(
    st.lists(st.lists(st.integers(0, 1000), max_size=120), min_size=1, max_size=12),
    st.integers(4, 50),
)
def test_no_token_lost_or_duplicated(documents, chunk_len):
    chunks = split_into_chunks(documents, chunk_len, SEP)
    assert all(1 <= len(chunk) <= chunk_len for chunk in chunks)
    rebuilt = rebuild(chunks)
    assert rebuilt == {i: doc for i, doc in enumerate(documents) if doc}
    payload = sum(len(c) for c in chunks) - sum(SEP.count(-1) * (len(c.spans) - 1) for c in chunks)
    assert payload == sum(len(doc) for doc in documents)
    order = [(span.document, span.start) for chunk in chunks for span in chunk.spans]
    assert order == sorted(order)


def test_small_documents_are_packed_and_large_ones_split_evenly():
    documents = [list(range(10)), list(range(3)), list(range(25))]
    chunks = split_into_chunks(documents, 8, SEP)
    sizes = [len(chunk) for chunk in chunks]
    assert sizes[:2] == [5, 5]
    assert chunks[2].token_ids == [0, 1, 2]
    assert sizes[3:] == [6, 6, 7, 6]
    packed = split_into_chunks([[1, 2], [3, 4], [5]], 8, SEP)
    assert [c.token_ids for c in packed] == [[1, 2, -1, 3, 4, -1, 5]]
    assert [c.documents for c in packed] == [[0, 1, 2]]


def test_positions_never_exceed_the_trained_window():
    engine = tiny_engine("llama", window=256, kv_budget=64, keep_chunks=2)
    seen: list[int] = []

    def record(module, args, kwargs):
        seen.append(int(kwargs["position_ids"].max()))

    handle = engine.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        answer = engine.generate(text_of_tokens(2000), "Where?", max_new_tokens=20)
    finally:
        handle.remove()
    assert answer.stats.chunks_total >= 10
    assert max(seen) < engine.native_window
    assert answer.stats.context_tokens == 2000


@pytest.mark.parametrize("documents", [3, 7])
def test_document_boundaries_are_chunk_boundaries_when_they_fit(documents):
    engine = tiny_engine("llama", keep_chunks=1.0, kv_budget=None)
    docs = [text_of_tokens(300, seed=i) for i in range(documents)]
    answer = engine.generate(docs, "Which?", max_new_tokens=4)
    assert [c.documents for c in answer.stats.chunks] == [(i,) for i in range(documents)]


def test_default_chunks_fill_a_share_of_the_room_when_the_context_does_not_fit():
    whole = tiny_engine("llama").config.chunk_tokens  # the test settings fill the whole room
    engine = tiny_engine("llama", chunk_room_fraction=0.25)
    assert engine.config.chunk_tokens == whole // 4
    assert tiny_engine("llama", chunk_room_fraction=0.01).config.chunk_tokens == 16

    def chunk_sizes(engine, tokens: int) -> list[int]:
        return [len(chunk) for chunk in engine.encode(text_of_tokens(tokens)).chunks]

    quarter = whole // 4
    assert chunk_sizes(engine, whole) == [whole]
    for sizes, tokens in (
        (chunk_sizes(engine, whole + 1), whole + 1),
        (chunk_sizes(tiny_engine("llama", chunk_tokens=quarter), whole), whole),
    ):
        assert len(sizes) == math.ceil(tokens / quarter) == 5
        assert max(sizes) <= quarter and sum(sizes) == tokens
