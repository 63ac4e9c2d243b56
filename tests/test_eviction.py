"""Chunk eviction keeps the configured count, the most relevant chunks; KV eviction keeps exactly
the configured budget, shared by the kept chunks (their KV merged, `kept_chunks="merge"`)."""

from __future__ import annotations

import pytest
import torch

from parallelcomp_llm.stages import ChunkEntries, EvenBudget, SnapKVSelector
from parallelcomp_llm.testing import text_of_tokens, tiny_engine


@pytest.mark.parametrize("keep, budget", [(1, 16), (2, 40), (3, 100)])
def test_kept_kv_is_prefix_plus_budget_per_kept_chunk(keep, budget):
    engine = tiny_engine("mistral", kept_chunks="merge", keep_chunks=keep, kv_budget=keep * budget)
    docs = [text_of_tokens(300, seed=i) for i in range(5)]
    answer = engine.generate(docs, "Which one?", max_new_tokens=4)
    prefix = len(engine.prompts.prefix_ids)
    assert answer.stats.chunks_kept == keep
    assert sum(c.kept for c in answer.stats.chunks) == keep
    assert answer.stats.kv_entries_kept == prefix + keep * budget


@pytest.mark.parametrize("documents", [1, 2, 5])
def test_kept_chunks_share_the_budget(documents):
    engine = tiny_engine("mistral", kept_chunks="merge", keep_chunks=3, kv_budget=120)
    docs = [text_of_tokens(300, seed=i) for i in range(documents)]
    answer = engine.generate(docs, "Which one?", max_new_tokens=4)
    assert answer.stats.chunks_total == documents
    assert answer.stats.chunks_kept == min(documents, 3)
    assert answer.stats.kv_entries_kept == len(engine.prompts.prefix_ids) + 120
    split = engine.stages.budget.split(documents)
    assert (split.keep_chunks, split.entries_per_chunk) == (
        min(documents, 3),
        120 // split.keep_chunks,
    )


def test_fraction_and_no_eviction():
    engine = tiny_engine("qwen2", kept_chunks="merge", keep_chunks=0.5, kv_budget=None)
    docs = [text_of_tokens(300, seed=i) for i in range(6)]
    answer = engine.generate(docs, "Which one?", max_new_tokens=4)
    assert answer.stats.chunks_kept == 3
    kept_tokens = sum(c.tokens for c in answer.stats.chunks if c.kept)
    assert answer.stats.kv_entries_kept == len(engine.prompts.prefix_ids) + kept_tokens


def test_without_prefix_dedup_each_kept_chunk_brings_its_prefix():
    engine = tiny_engine(
        "llama", kept_chunks="merge", keep_chunks=2, kv_budget=100, dedupe_prefix=False
    )
    answer = engine.generate(
        [text_of_tokens(300, seed=i) for i in range(4)], "Q?", max_new_tokens=2
    )
    assert answer.stats.kv_entries_kept == 2 * (len(engine.prompts.prefix_ids) + 50)


def test_budget_split_by_count_fraction_and_none():
    assert EvenBudget(keep_chunks=3, kv_budget=3072).split(18).entries_per_chunk == 1024
    assert EvenBudget(keep_chunks=3, kv_budget=3072).split(1).entries_per_chunk == 3072
    assert EvenBudget(keep_chunks=0.25, kv_budget=None).split(10).keep_chunks == 2
    assert EvenBudget(keep_chunks=0.01, kv_budget=10).split(10).keep_chunks == 1


def test_a_relative_share_floor_cuts_the_kept_chunks():
    floored = EvenBudget(keep_chunks=3, keep_relative_share=0.25)
    assert floored.surviving([0.05, 0.7, 0.05, 0.2], 3) == 2
    assert floored.surviving([0.25, 0.25, 0.25, 0.25], 3) == 3
    assert floored.surviving([0.9, 0.1], 2) == 1
    assert EvenBudget(keep_chunks=3).surviving([0.05, 0.7, 0.05, 0.2], 3) == 3
    with pytest.raises(ValueError, match="keep_relative_share"):
        EvenBudget(keep_relative_share=0.0)


@pytest.mark.parametrize("floor", [None, 1e-12, 1.0])
def test_the_floor_keeps_the_best_chunks_it_lets_through(floor):
    docs = [text_of_tokens(300, seed=i) for i in range(5)]
    engine = tiny_engine(
        "llama", kept_chunks="merge", keep_chunks=3, kv_budget=96, keep_relative_share=floor
    )
    answer = engine.generate(docs, "Which one?", max_new_tokens=4)
    shares = [c.relevance for c in answer.stats.chunks]
    best = sorted(range(5), key=lambda i: -shares[i])
    through = [i for i in best[:3] if floor is None or shares[i] >= floor * shares[best[0]]]
    kept = [i for i, c in enumerate(answer.stats.chunks) if c.kept]
    assert kept == sorted(through) and answer.stats.chunks_kept == len(through)
    assert len(kept) == {None: 3, 1e-12: 3, 1.0: 1}[floor]
    alone = tiny_engine(
        "llama", kept_chunks="merge", keep_chunks=len(kept), kv_budget=96 * len(kept) // 3
    )
    assert alone.generate(docs, "Which one?", max_new_tokens=4).token_ids == answer.token_ids


def test_most_relevant_chunks_are_kept():
    engine = tiny_engine("llama", kept_chunks="merge", keep_chunks=2, kv_budget=128)
    answer = engine.generate(
        [text_of_tokens(300, seed=i) for i in range(5)], "Which one?", max_new_tokens=2
    )
    relevance = [c.relevance for c in answer.stats.chunks]
    kept = [i for i, c in enumerate(answer.stats.chunks) if c.kept]
    assert answer.stats.scorer == "nll" and all(0.0 <= r <= 1.0 for r in relevance)
    assert sum(relevance) == pytest.approx(1.0)
    assert kept == sorted(sorted(range(5), key=lambda i: -relevance[i])[:2])


def test_token_selection_follows_pooled_scores():
    attention = torch.zeros(2, 20)
    attention[0, 10] = 5.0
    attention[1, 3] = 4.0
    entries = ChunkEntries(0, torch.zeros(2, 20, 4), torch.zeros(2, 20, 4), attention)
    selector = SnapKVSelector(pooling_kernel=3)
    assert selector.score(entries)[0, 9:12].tolist() == [5.0, 5.0, 5.0]
    assert selector.select(entries, 3).tolist() == [[9, 10, 11], [2, 3, 4]]
    assert selector.select(entries, 50).shape == (2, 20)


def test_attention_scoring_ranks_and_keeps():
    engine = tiny_engine(
        "llama", kept_chunks="merge", keep_chunks=2, chunk_scoring="attention", kv_budget=128
    )
    answer = engine.generate(
        [text_of_tokens(300, seed=i) for i in range(4)], "Q?", max_new_tokens=2
    )
    assert answer.stats.scorer == "attention"
    relevance = [c.relevance for c in answer.stats.chunks]
    kept = [i for i, c in enumerate(answer.stats.chunks) if c.kept]
    assert kept == sorted(sorted(range(4), key=lambda i: -relevance[i])[:2])
    assert all(0.0 < r <= 1.0 for r in relevance) and sum(relevance) == pytest.approx(1.0)
