"""Scoring by retrieval heads (`chunk_scoring="heads"`): the passes stop after the deepest head's
layer, and the chunks rank as they would with every layer run."""

from __future__ import annotations

import pytest
import torch

from parallelcomp_llm import InvalidConfigError, ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.prefill import prefill_rows
from parallelcomp_llm.stages import RetrievalHeadScorer
from parallelcomp_llm.testing import TINY_SETTINGS, text_of_tokens, tiny_model, tiny_tokenizer

DOCS = [text_of_tokens(300, seed=i) for i in range(6)]
HEADS = ((0, 1), (1, 0))


class EveryLayer(RetrievalHeadScorer):
    """The same scorer, with every pass run through every layer."""

    @property
    def layers_read(self) -> None:
        return None


def heads_engine(scorer=None, layers: int = 3, **settings) -> ParallelCompEngine:
    config = ParallelCompConfig(
        **TINY_SETTINGS
        | {
            "chunk_room_fraction": 0.25,
            "keep_chunks": 2,
            "chunk_scoring": "heads",
            "scoring_heads": HEADS,
            "chunk_batch_size": 4,
            "context_cache_host_fraction": 0.0,
        }
        | settings
    )
    model = tiny_model("llama", layers=layers)
    return ParallelCompEngine(model, tiny_tokenizer(), config, scorer=scorer)


def last_layer_calls(engine: ParallelCompEngine) -> list[int]:
    """A list that counts (by its length) the forward passes of the model's last layer."""
    calls: list[int] = []
    engine.model.get_decoder().layers[-1].register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_a_prefill_stopped_after_some_layers_holds_their_kv_and_leaves_the_model_whole():
    model = tiny_model("llama", layers=3)
    rows = [[5, 6, 7, 8, 9], [10, 11, 12]]
    full = prefill_rows(model, rows, 0, [0, 1])
    first = prefill_rows(model, rows, 0, [0, 1], layers=2)
    assert len(full.keys) == 3 and len(first.keys) == 2
    for layer in range(2):
        assert torch.equal(first.keys[layer], full.keys[layer])
        assert torch.equal(first.values[layer], full.values[layer])
    again = prefill_rows(model, rows, 0, [0, 1])
    assert all(torch.equal(a, b) for a, b in zip(again.keys, full.keys, strict=True))


def test_the_heads_rank_the_chunks_as_with_every_layer_run_and_the_last_layer_only_answers():
    engine = heads_engine()
    everywhere = heads_engine(scorer=EveryLayer(heads=HEADS))
    calls, calls_everywhere = last_layer_calls(engine), last_layer_calls(everywhere)
    answer = engine.generate(DOCS, "Which?", max_new_tokens=4, ignore_eos=True)
    reference = everywhere.generate(DOCS, "Which?", max_new_tokens=4, ignore_eos=True)
    relevance = [chunk.relevance for chunk in answer.stats.chunks]
    assert answer.stats.chunks_total > 4 and answer.stats.scorer == "heads"
    assert relevance == pytest.approx([chunk.relevance for chunk in reference.stats.chunks])
    assert answer.token_ids == reference.token_ids
    assert len(calls) == 4  # the final pass and three decoding steps
    assert len(calls_everywhere) > len(calls)


def test_an_encoded_context_and_the_engines_own_store_serve_the_heads():
    engine = heads_engine(context_cache_host_fraction=0.5)
    fresh = engine.generate(DOCS, "Which?", max_new_tokens=3, ignore_eos=True)
    stored = engine.generate(DOCS, "Which?", max_new_tokens=3, ignore_eos=True)
    encoded = engine.encode(DOCS)
    again = engine.generate(encoded, "Which?", max_new_tokens=3, ignore_eos=True)
    assert stored.stats.context_cache_hit and encoded.layers == 3
    for other in (stored, again):
        assert other.token_ids == fresh.token_ids
        relevance = [chunk.relevance for chunk in other.stats.chunks]
        assert relevance == pytest.approx([chunk.relevance for chunk in fresh.stats.chunks])


@pytest.mark.parametrize(
    ("heads", "message"),
    [(((3, 0),), "reads layer 3, outside the model's 3 layers"), (((1, 2),), "KV head 2")],
)
def test_heads_the_model_lacks_are_refused_when_the_engine_is_built(heads, message):
    config = ParallelCompConfig(**TINY_SETTINGS, chunk_scoring="heads", scoring_heads=heads)
    with pytest.raises(InvalidConfigError, match=message):
        ParallelCompEngine(tiny_model("llama", layers=3), tiny_tokenizer(), config)


def test_scoring_heads_go_with_the_heads_scorer_only():
    with pytest.raises(InvalidConfigError, match="needs scoring_heads"):
        ParallelCompConfig(chunk_scoring="heads")
    with pytest.raises(InvalidConfigError, match="read only by chunk_scoring='heads'"):
        ParallelCompConfig(scoring_heads=[(0, 0)])
