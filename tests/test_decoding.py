"""Decoding: stop strings, streaming equals non-streaming, sampling, EOS and finish reasons."""

from __future__ import annotations

import pytest

from parallelcomp_llm import ParallelCompEngine
from parallelcomp_llm.decoding import TextDeltas
from parallelcomp_llm.testing import text_of_tokens, tiny_engine, tiny_model, tiny_tokenizer

DOCS = [text_of_tokens(300, seed=i) for i in range(4)]


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("llama", keep_chunks=2, kv_budget=128)


def test_streaming_equals_non_streaming(engine):
    answer = engine.generate(DOCS, "What?", max_new_tokens=30)
    stream = engine.stream(DOCS, "What?", max_new_tokens=30)
    deltas = list(stream)
    assert "".join(deltas) == answer.text
    assert stream.answer.token_ids == answer.token_ids
    assert len(deltas) > 1


def test_multi_token_stop_string_is_cut_and_not_returned(engine):
    full = engine.generate(DOCS, "What?", max_new_tokens=30)
    assert len(full.text) > 8
    stop = full.text[5:8]
    answer = engine.generate(DOCS, "What?", max_new_tokens=30, stop=[stop])
    assert answer.text == full.text[: full.text.index(stop)]
    assert answer.finish_reason == "stop"
    assert "".join(engine.stream(DOCS, "What?", max_new_tokens=30, stop=stop)) == answer.text


def test_length_finish_and_eos(engine):
    answer = engine.generate(DOCS, "What?", max_new_tokens=5)
    assert (answer.finish_reason, len(answer.token_ids)) == ("length", 5)
    first = answer.token_ids[0]
    model = tiny_model("llama")
    model.generation_config.eos_token_id = [first]
    ending = ParallelCompEngine(model, tiny_tokenizer(), engine.config)
    assert first in ending.eos_token_ids
    stopped = ending.generate(DOCS, "What?", max_new_tokens=5)
    assert (stopped.finish_reason, stopped.token_ids, stopped.text) == ("stop", [], "")
    ignored = ending.generate(DOCS, "What?", max_new_tokens=5, ignore_eos=True)
    assert ignored.token_ids == answer.token_ids and ignored.finish_reason == "length"


def test_sampling_is_reproducible_with_a_seed(engine):
    runs = [
        engine.generate(DOCS, "What?", max_new_tokens=12, temperature=1.5, top_p=0.95, seed=s)
        for s in (7, 7, 8)
    ]
    assert runs[0].token_ids == runs[1].token_ids
    assert runs[0].token_ids != runs[2].token_ids
    greedy = engine.generate(DOCS, "What?", max_new_tokens=12)
    assert runs[0].token_ids != greedy.token_ids


def test_text_deltas_hold_back_partial_stop_and_incomplete_characters():
    tokenizer = tiny_tokenizer()
    deltas = TextDeltas(tokenizer, ["END"])
    out = [deltas.push(t) for t in tokenizer("abEN", add_special_tokens=False)["input_ids"]]
    assert "".join(out) == "ab"
    assert deltas.push(tokenizer.convert_tokens_to_ids("D")) == ""
    assert deltas.stopped and deltas.emitted == "ab"
    accented = TextDeltas(tokenizer, [])
    first, second = tokenizer("é", add_special_tokens=False)["input_ids"]
    assert accented.push(first) == ""
    assert accented.push(second) == "é"


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_static_cache_decodes_the_tokens_of_the_growing_one(architecture):
    settings = {"keep_chunks": 2, "kv_budget": 96}
    grown = tiny_engine(architecture, decode_step="dynamic", **settings)
    static = tiny_engine(architecture, decode_step="static", **settings)
    questions = ["Which?", "A longer question, so that the rows are padded?", "Q3"]
    calls = [
        lambda e: [e.generate(DOCS, "Which?", max_new_tokens=40, ignore_eos=True)],
        lambda e: [e.generate(DOCS, "Which?", max_new_tokens=40, temperature=0.9, seed=5)],
        lambda e: e.generate_batch(DOCS, questions, max_new_tokens=25, ignore_eos=True),
        lambda e: [e.complete("Once upon a time", max_new_tokens=20, ignore_eos=True)],
    ]
    for call in calls:
        expected = [answer.token_ids for answer in call(grown)]
        assert [answer.token_ids for answer in call(static)] == expected
        assert all(expected)


def test_a_compiled_static_step_decodes_the_tokens_of_the_growing_one():
    settings = {"keep_chunks": 2, "kv_budget": 96}
    grown = tiny_engine("llama", decode_step="dynamic", **settings)
    compiled = tiny_engine("llama", decode_step="compiled", **settings)
    questions = ["Which?", "A longer question, so that the rows are padded?", "Q3"]
    calls = [
        lambda e: [e.generate(DOCS, "Which?", max_new_tokens=40, ignore_eos=True)],
        lambda e: e.generate_batch(DOCS, questions, max_new_tokens=25, ignore_eos=True),
        lambda e: [e.generate(DOCS, "Who?", max_new_tokens=40, temperature=0.9, seed=5)],
    ]
    for call in calls:
        expected = [answer.token_ids for answer in call(grown)]
        assert [answer.token_ids for answer in call(compiled)] == expected
        assert all(expected)


def test_decode_steps_that_cannot_run_are_refused():
    from parallelcomp_llm import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="sliding-window"):
        tiny_engine("mistral", decode_step="static")
    with pytest.raises(InvalidConfigError, match="calibration"):
        tiny_engine("llama", decode_step="static", calibration_layers=(0, 1))
    with pytest.raises(InvalidConfigError, match="needs a CUDA device"):
        tiny_engine("llama", decode_step="cuda_graph")
    with pytest.raises(InvalidConfigError, match="sliding-window"):
        tiny_engine("mistral", decode_step="compiled")
    assert tiny_engine("mistral").generate(DOCS, "Which?", max_new_tokens=3).token_ids
