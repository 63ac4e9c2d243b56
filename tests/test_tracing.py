"""The stage seams: the observer sees every stage of the method, in order and balanced, and a
profiler of all threads sees them as `parallelcomp/<stage>` ranges."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.testing import TINY_SETTINGS, text_of_tokens, tiny_model, tiny_tokenizer
from parallelcomp_llm.tracing import STAGES

DOCS = [text_of_tokens(300, seed=i) for i in range(4)]


def observed_engine(seen: list[tuple[str, str]], **settings) -> ParallelCompEngine:
    config = ParallelCompConfig(
        **(TINY_SETTINGS | {"context_cache_host_fraction": 0.0, "chunk_batch_size": 2} | settings)
    )
    return ParallelCompEngine(
        tiny_model("llama"), tiny_tokenizer(), config, observer=lambda *event: seen.append(event)
    )


def test_the_observer_sees_the_method_in_order():
    seen: list[tuple[str, str]] = []
    engine = observed_engine(seen, keep_chunks=2, kv_budget=96)
    answer = engine.generate(DOCS, "Which?", max_new_tokens=5, ignore_eos=True)
    assert {stage for stage, _ in seen} <= set(STAGES)
    open_stages = []
    for stage, phase in seen:
        if phase == "start":
            assert not open_stages, f"{stage} started inside {open_stages}"
            open_stages.append(stage)
        else:
            assert open_stages == [stage]
            open_stages.pop()
    starts = [stage for stage, phase in seen if phase == "start"]
    per_batch = ["chunk_prefill", "question_pass", "chunk_scoring", "kv_selection"]
    assert starts[:8] == per_batch * 2  # two chunk batches of two chunks
    assert starts[8:11] == ["chunk_eviction", "merge", "final_pass"]
    assert starts[11:] == ["sampling", "decode_step"] * 4 + ["sampling"]
    assert len(answer.token_ids) == 5


def test_a_plain_prompt_is_one_prefill_then_decoding():
    seen: list[tuple[str, str]] = []
    observed_engine(seen).complete("Once upon a time", max_new_tokens=2, ignore_eos=True)
    starts = [stage for stage, phase in seen if phase == "start"]
    assert starts == ["prompt_prefill", "sampling", "decode_step", "sampling"]


def test_the_profiler_sees_the_stages_by_name():
    engine = observed_engine([], keep_chunks=2, kv_budget=96)
    everywhere = torch.profiler._ExperimentalConfig(profile_all_threads=True)
    with profile(activities=[ProfilerActivity.CPU], experimental_config=everywhere) as profiler:
        engine.generate(DOCS, "Which?", max_new_tokens=3)
    ranges = {event.key for event in profiler.key_averages()}
    assert {
        f"parallelcomp/{stage}" for stage in ("chunk_prefill", "kv_selection", "merge")
    } <= ranges


def test_a_scorer_of_the_question_alone_reads_it_once_and_no_question_pass_after_the_chunks():
    seen: list[tuple[str, str]] = []
    engine = observed_engine(seen, keep_chunks=2, kv_budget=None, chunk_scoring="key_match")
    fresh = engine.generate(DOCS, "Which?", max_new_tokens=3, ignore_eos=True)
    starts = [stage for stage, phase in seen if phase == "start"]
    per_batch = ["chunk_prefill", "chunk_scoring", "kv_selection"]
    assert starts[:7] == per_batch[:1] + ["question_pass"] + per_batch[1:] + per_batch
    assert starts.count("question_pass") == 1
    seen.clear()
    again = engine.generate(engine.encode(DOCS), "Which?", max_new_tokens=3, ignore_eos=True)
    assert [stage for stage, phase in seen if phase == "start"].count("question_pass") == 1
    assert [c.relevance for c in again.stats.chunks] == [c.relevance for c in fresh.stats.chunks]
    assert again.token_ids == fresh.token_ids and fresh.stats.scorer == "key_match"
