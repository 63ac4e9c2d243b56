"""The stages' contract, for every registered scorer and selector, and a selector written here
(key norm, registered from this file) running end to end through `generate`."""

from __future__ import annotations

import pytest
import torch

from parallelcomp_llm import InvalidConfigError, ParallelCompConfig, ParallelCompEngine, StageError
from parallelcomp_llm.stages import (
    SCORERS,
    SELECTORS,
    BiasCalibrator,
    BudgetSplit,
    ChunkEntries,
    ChunkScorer,
    EvenBudget,
    ScoredSelector,
    SnapKVSelector,
)
from parallelcomp_llm.testing import TINY_SETTINGS, text_of_tokens, tiny_model, tiny_tokenizer

DOCS = [text_of_tokens(300, seed=i) for i in range(5)]
CALLS: list[tuple[int, int, int]] = []
"""(layer, tokens, budget) of every call of the key-norm selector."""


@SELECTORS.register("keynorm")
class KeyNormSelector(ScoredSelector):
    """Keeps the keys of smallest norm (kvpress's KnormPress)."""

    def score(self, entries: ChunkEntries) -> torch.Tensor:
        return -entries.keys.norm(dim=-1)

    def select(self, entries: ChunkEntries, budget: int) -> torch.Tensor:
        CALLS.append((entries.layer, entries.tokens, budget))
        return super().select(entries, budget)


def engine(**keywords) -> ParallelCompEngine:
    """A tiny engine; keywords are `ParallelCompConfig` fields or stage objects."""
    stage_names = {"scorer", "selector", "budget", "calibrator", "observer"}
    stages = {k: v for k, v in keywords.items() if k in stage_names}
    settings = {k: v for k, v in keywords.items() if k not in stage_names}
    config = ParallelCompConfig(**(TINY_SETTINGS | settings))
    return ParallelCompEngine(tiny_model("llama"), tiny_tokenizer(), config, **stages)


SCORER_SETTINGS = {"heads": {"scoring_heads": [(1, 0), (0, 1)]}}
"""What a scorer needs beyond the defaults, by name."""


@pytest.mark.parametrize("name", list(SCORERS))
def test_scorer_contract(name):
    needs = SCORER_SETTINGS.get(name, {})
    scorer = SCORERS.build(name, ParallelCompConfig(chunk_scoring=name, **needs))
    assert scorer.name == name and scorer.describe()["name"] == name
    with pytest.raises(Exception):
        scorer.observation_window = 3  # frozen
    with pytest.raises(InvalidConfigError):
        type(scorer)(no_such_parameter=1)
    answers = [
        engine(
            chunk_scoring=name, keep_chunks=2, kv_budget=96, chunk_batch_size=size, **needs
        ).generate(DOCS, "Which one?", max_new_tokens=6)
        for size in (1, 5)
    ]
    relevance = [[c.relevance for c in a.stats.chunks] for a in answers]
    assert all(isinstance(r, float) and r == r for r in relevance[0])
    assert relevance[0] == pytest.approx(relevance[1], abs=1e-4)  # batch composition is moot
    kept = [i for i, c in enumerate(answers[0].stats.chunks) if c.kept]
    assert kept == sorted(sorted(range(5), key=lambda i: -relevance[0][i])[:2])
    assert answers[0].stats.scorer == name
    assert answers[0].token_ids == answers[1].token_ids


@pytest.mark.parametrize("name", list(SELECTORS))
def test_selector_contract(name):
    selector = SELECTORS.build(name, ParallelCompConfig())
    assert selector.name == name and selector.describe()["name"] == name
    torch.manual_seed(0)
    tokens = 40
    entries = ChunkEntries(
        0, torch.randn(3, tokens, 8), torch.randn(3, tokens, 8), torch.rand(3, tokens)
    )
    for budget in (1, 7, tokens, tokens + 5):
        picked = selector.select(entries, budget)
        assert picked.shape == (3, min(budget, tokens)) and picked.dtype == torch.long
        assert bool((picked[:, 1:] > picked[:, :-1]).all())  # ascending, no repeats
        assert int(picked.min()) >= 0 and int(picked.max()) < tokens
    built = engine(kv_selection=name, keep_chunks=2, kv_budget=96)
    answer = built.generate(DOCS, "Which one?", max_new_tokens=6)
    assert answer.stats.kv_entries_kept == len(built.prompts.prefix_ids) + 96
    assert len(answer.token_ids) == 6 or answer.finish_reason == "stop"


def test_a_selector_from_a_test_file_runs_end_to_end():
    CALLS.clear()
    given = engine(selector=KeyNormSelector(), keep_chunks=2, kv_budget=96)
    answer = given.generate(DOCS, "Which one?", max_new_tokens=8)
    assert given.stages.selector.name == "keynorm"
    assert answer.stats.kv_entries_kept == len(given.prompts.prefix_ids) + 96
    layers = given.model.config.num_hidden_layers
    assert CALLS == [(layer, 300, 48) for _ in DOCS for layer in range(layers)]
    by_name = engine(kv_selection="keynorm", keep_chunks=2, kv_budget=96)
    assert by_name.generate(DOCS, "Which one?", max_new_tokens=8).token_ids == answer.token_ids
    snapkv = engine(keep_chunks=2, kv_budget=96).generate(DOCS, "Which one?", max_new_tokens=8)
    assert snapkv.stats.chunks == answer.stats.chunks  # same chunks, other entries kept


def test_stage_parameters_are_validated_where_they_are_declared():
    with pytest.raises(InvalidConfigError, match="pooling_kernel"):
        SnapKVSelector(pooling_kernel=4)
    with pytest.raises(InvalidConfigError, match="keep_chunks"):
        EvenBudget(keep_chunks=0)
    with pytest.raises(InvalidConfigError, match="keep_chunks"):
        EvenBudget(keep_chunks=True)
    with pytest.raises(InvalidConfigError, match="layers"):
        BiasCalibrator(layers=(3, 1))
    with pytest.raises(InvalidConfigError, match="unknown chunk scorer 'bm25'"):
        ParallelCompConfig(chunk_scoring="bm25")
    with pytest.raises(InvalidConfigError, match="KVSelector"):
        engine(selector=SnapKVSelector)


def test_stages_given_as_objects_replace_the_configured_ones():
    given = engine(
        selector=SnapKVSelector(observation_window=4, pooling_kernel=3),
        budget=EvenBudget(keep_chunks=1, kv_budget=50),
        calibrator=BiasCalibrator(layers=(0, 1), threshold=1e9),
    )
    answer = given.generate(DOCS, "Which one?", max_new_tokens=4)
    assert answer.stats.chunks_kept == 1
    assert answer.stats.kv_entries_kept == len(given.prompts.prefix_ids) + 50
    described = given.stages.describe()
    assert described["selector"]["observation_window"] == 4
    assert described["calibrator"]["class"] == "BiasCalibrator"


@pytest.mark.parametrize(
    "stage",
    [EvenBudget(), EvenBudget(keep_chunks=0.5, kv_budget=None), BiasCalibrator(layers=(0, 1))],
    ids=["even", "even-fraction", "bias"],
)
def test_budget_and_calibrator_contract(stage):
    if isinstance(stage, EvenBudget):
        for chunks in (1, 2, 7, 69):
            split = stage.split(chunks)
            assert 1 <= split.keep_chunks <= chunks
            assert split.entries_per_chunk is None or split.entries_per_chunk >= 1
    else:
        offsets = torch.tensor([[[-1, 0, 1, 2, -1]]])
        lengths = torch.tensor([[[0, 3, 3, 3, 0]]])
        biased = stage.biased(torch.full((1, 1, 7), 1 / 7), offsets, lengths)
        assert biased.dtype == torch.bool and biased.shape == offsets.shape
        assert not biased[offsets < 0].any()  # prefix and padding are never masked
    assert stage.describe()["class"] == type(stage).__name__


def test_a_subclass_of_a_registered_stage_is_not_reported_under_its_name():
    class Quieter(SnapKVSelector):
        pass

    assert SnapKVSelector.name == "snapkv" and Quieter.name == ""
    answer = engine(selector=Quieter(), keep_chunks=2, kv_budget=96).generate(
        DOCS, "Which one?", max_new_tokens=2
    )
    assert answer.stats.scorer == "nll"
    assert Quieter().describe()["name"] is None


class BrokenScorer(ChunkScorer):
    def score(self, evidence):
        return torch.zeros(len(evidence.context) + 1)


class BrokenSelector(ScoredSelector):
    def score(self, entries):
        return entries.keys.norm(dim=-1).int()

    def select(self, entries, budget):
        return super().select(entries, budget).int()


class BrokenBudget(EvenBudget):
    def split(self, chunks):
        return BudgetSplit(keep_chunks=chunks + 1, entries_per_chunk=10)


class BrokenSurvivors(EvenBudget):
    def surviving(self, shares, keep):
        return 0


@pytest.mark.parametrize(
    "stage, method",
    [
        ({"scorer": BrokenScorer()}, "BrokenScorer.score"),
        ({"selector": BrokenSelector()}, "BrokenSelector.select"),
        ({"budget": BrokenBudget()}, "BrokenBudget.split"),
        ({"budget": BrokenSurvivors()}, "BrokenSurvivors.surviving"),
    ],
)
def test_a_stage_that_breaks_its_contract_is_named(stage, method):
    broken = engine(keep_chunks=2, kv_budget=96, **stage)
    with pytest.raises(StageError, match=method):
        broken.generate(DOCS, "Which one?", max_new_tokens=2)
    assert not broken.busy


def test_stage_windows_are_validated():
    with pytest.raises(InvalidConfigError, match="observation_window"):
        BrokenScorer(observation_window=0)


def test_the_engine_takes_its_attention_kernel_back():
    given = engine(keep_chunks=2, kv_budget=96)
    expected = given.generate(DOCS, "Which one?", max_new_tokens=6)
    given.model.set_attn_implementation("sdpa")  # e.g. a baseline run on the same model
    assert given.generate(DOCS, "Which one?", max_new_tokens=6).token_ids == expected.token_ids
