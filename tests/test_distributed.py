"""Chunk prefill on Ray actors (`parallelcomp_llm.distributed`): over a real local Ray cluster on
the CPU, an engine whose chunk batches run on two prefill workers answers token for token as the
one-process engine, whether its questions read their kept chunks again or merge their KV, for one
question and for several; the coordinator itself prefills no chunk."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine  # noqa: E402
from parallelcomp_llm.distributed import RayPrefillWorkers  # noqa: E402
from parallelcomp_llm.testing import TINY_SETTINGS, text_of_tokens, tiny_model_folder  # noqa: E402

pytestmark = pytest.mark.serving

DOCS = [text_of_tokens(60, seed=i) for i in range(7)]
"""Seven documents, each a chunk of its own: four batches of two rows (the last of one)."""
QUESTIONS = ["Which part holds it?", "What comes after the third part?"]
SETTINGS = TINY_SETTINGS | {
    "chunk_tokens": 60,
    "chunk_batch_size": 2,
    "dtype": "float32",
    "device": "cpu",
    "context_cache_host_fraction": 0.0,
}
MODES = {
    "reread": {"kept_chunks": "reread", "keep_chunks": 2},
    "merge": {"kept_chunks": "merge", "keep_chunks": 3, "kv_budget": 96},
}


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_prefill_workers_answer_as_one_process(cluster, model_path, mode):
    config = ParallelCompConfig(**(SETTINGS | MODES[mode]))
    alone = ParallelCompEngine.from_pretrained(model_path, config)
    stages_run: list[str] = []
    spread = ParallelCompEngine.from_pretrained(
        model_path,
        config,
        prefill_workers=RayPrefillWorkers(count=2, gpus_per_worker=0, cpus_per_worker=1),
        observer=lambda stage, phase: stages_run.append(stage) if phase == "start" else None,
    )
    expected = alone.generate_batch(DOCS, QUESTIONS, max_new_tokens=8, ignore_eos=True)
    answers = spread.generate_batch(DOCS, QUESTIONS, max_new_tokens=8, ignore_eos=True)
    assert "question_pass" not in stages_run and "kv_selection" not in stages_run
    assert answers[0].stats.chunks_prefilled == len(DOCS)
    for answer, reference in zip(answers, expected, strict=True):
        assert answer.token_ids == reference.token_ids and len(answer.token_ids) == 8
        assert answer.stats.chunks_total == len(DOCS)
        assert [c.kept for c in answer.stats.chunks] == [c.kept for c in reference.stats.chunks]
        relevance = [c.relevance for c in answer.stats.chunks]
        assert relevance == pytest.approx([c.relevance for c in reference.stats.chunks])
        assert answer.stats.reread == reference.stats.reread == (mode == "reread")
    single = spread.generate(DOCS, QUESTIONS[1], max_new_tokens=8, ignore_eos=True)
    assert single.token_ids == expected[1].token_ids
