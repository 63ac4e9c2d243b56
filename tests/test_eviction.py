"""Chunk eviction keeps the configured count; KV eviction keeps exactly the configured budget,
shared by the kept chunks."""

from __future__ import annotations

import pytest
import torch

from parallelcomp_llm import eviction
from parallelcomp_llm.testing import text_of_tokens, tiny_engine


@pytest.mark.parametrize("keep, budget", [(1, 16), (2, 40), (3, 100)])
def test_kept_kv_is_prefix_plus_budget_per_kept_chunk(keep, budget):
    engine = tiny_engine("mistral", keep_chunks=keep, kv_budget=keep * budget)
    docs = [text_of_tokens(300, seed=i) for i in range(5)]
    answer = engine.generate(docs, "Which one?", max_new_tokens=4)
    prefix = len(engine.prompts.prefix_ids)
    assert answer.stats.chunks_kept == keep
    assert sum(c.kept for c in answer.stats.chunks) == keep
    assert answer.stats.kv_entries_kept == prefix + keep * budget


@pytest.mark.parametrize("documents", [1, 2, 5])
def test_kept_chunks_share_the_budget(documents):
    engine = tiny_engine("mistral", keep_chunks=3, kv_budget=120)
    docs = [text_of_tokens(300, seed=i) for i in range(documents)]
    answer = engine.generate(docs, "Which one?", max_new_tokens=4)
    assert answer.stats.chunks_total == documents
    assert answer.stats.chunks_kept == min(documents, 3)
    assert answer.stats.kv_entries_kept == len(engine.prompts.prefix_ids) + 120
    assert engine.config.chunk_kv_budget(documents) == 120 // min(documents, 3)


def test_fraction_and_no_eviction():
    engine = tiny_engine("qwen2", keep_chunks=0.5, kv_budget=None)
    docs = [text_of_tokens(300, seed=i) for i in range(6)]
    answer = engine.generate(docs, "Which one?", max_new_tokens=4)
    assert answer.stats.chunks_kept == 3
    kept_tokens = sum(c.tokens for c in answer.stats.chunks if c.kept)
    assert answer.stats.kv_entries_kept == len(engine.prompts.prefix_ids) + kept_tokens


def test_without_prefix_dedup_each_kept_chunk_brings_its_prefix():
    engine = tiny_engine("llama", keep_chunks=2, kv_budget=100, dedupe_prefix=False)
    answer = engine.generate(
        [text_of_tokens(300, seed=i) for i in range(4)], "Q?", max_new_tokens=2
    )
    assert answer.stats.kv_entries_kept == 2 * (len(engine.prompts.prefix_ids) + 50)


def test_most_relevant_chunks_are_kept_by_nll():
    scores = [2.0, 0.5, 3.0, 0.7, 1.0]
    assert eviction.chunks_to_keep(scores, 2, lower_is_better=True) == [1, 3]
    assert eviction.chunks_to_keep(scores, 2, lower_is_better=False) == [0, 2]


def test_token_selection_follows_pooled_scores():
    scores = torch.zeros(2, 20)
    scores[0, 10] = 5.0
    scores[1, 3] = 4.0
    pooled = eviction.pooled_scores(scores, 3)
    assert pooled[0, 9:12].tolist() == [5.0, 5.0, 5.0]
    picked = eviction.top_entries(pooled, 3)
    assert picked.tolist() == [[9, 10, 11], [2, 3, 4]]
    states = torch.arange(2 * 20 * 4, dtype=torch.float).view(2, 20, 4)
    gathered = eviction.gather_entries(states, picked)
    assert torch.equal(gathered[1, 1], states[1, 3])


def test_attention_scoring_ranks_and_keeps():
    engine = tiny_engine("llama", keep_chunks=2, chunk_scoring="attention", kv_budget=128)
    answer = engine.generate(
        [text_of_tokens(300, seed=i) for i in range(4)], "Q?", max_new_tokens=2
    )
    assert answer.stats.score_kind == "attention"
    scores = [c.score for c in answer.stats.chunks]
    kept = [i for i, c in enumerate(answer.stats.chunks) if c.kept]
    assert kept == sorted(sorted(range(4), key=lambda i: -scores[i])[:2])
    assert all(0.0 < s <= 1.0 + 1e-5 for s in scores)
