"""Many callers, memory pressure, cancellation, limits and hostile input: correct answers or the
package's own errors, and the engine keeps working afterwards."""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallelcomp_llm import (
    DeviceMemoryError,
    EngineBusyError,
    InvalidConfigError,
    InvalidInputError,
    ParallelCompError,
    RequestTimeoutError,
)
from parallelcomp_llm.testing import ModelPause, text_of_tokens, tiny_engine

DOCS = [text_of_tokens(300, seed=i) for i in range(4)]
SETTINGS = dict(keep_chunks=2, kv_budget=96)


def test_threads_sharing_an_engine_each_get_their_own_answer():
    engine = tiny_engine("qwen2", **SETTINGS)
    jobs = [(DOCS[: 2 + i % 3], f"Question number {i}?") for i in range(8)]
    alone = [engine.generate(docs, q, max_new_tokens=10).token_ids for docs, q in jobs]

    def ask(job):
        docs, question = job
        return "".join(engine.stream(docs, question, max_new_tokens=10)), engine.generate(
            docs, question, max_new_tokens=10
        ).token_ids

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, jobs))
    assert [ids for _, ids in results] == alone
    assert [text for text, _ in results] == [engine.tokenizer.decode(ids) for ids in alone]


def hold_model(engine):
    """Start a stream whose first forward pass waits for the returned pause to be released, so
    that the model is busy until then."""
    pause = ModelPause(engine.model)
    stream = engine.stream(DOCS, "Which?", max_new_tokens=30)
    pause.wait_until_reached()
    assert engine.busy
    return pause, stream


def test_full_queue_is_refused_and_closing_a_stream_frees_the_model():
    engine = tiny_engine("llama", max_waiting_requests=0, **SETTINGS)
    pause, stream = hold_model(engine)
    with pytest.raises(EngineBusyError):
        engine.generate(DOCS, "Another?", max_new_tokens=4)
    pause.release()
    next(stream)
    stream.close()
    assert not engine.busy
    assert len(engine.generate(DOCS, "Another?", max_new_tokens=4).token_ids) == 4


def test_abandoned_stream_releases_the_model():
    engine = tiny_engine("llama", **SETTINGS)
    for _ in engine.stream(DOCS, "Which?", max_new_tokens=30):
        break
    gc.collect()
    assert not engine.busy
    assert engine.generate(DOCS, "Which?", max_new_tokens=3).finish_reason == "length"


def test_waiting_and_running_past_the_timeout():
    engine = tiny_engine("llama", request_timeout_s=3.0, **SETTINGS)
    pause, stream = hold_model(engine)
    with pytest.raises(RequestTimeoutError, match="waited"):
        engine.generate(DOCS, "Another?", max_new_tokens=4)
    pause.release()
    stream.close()
    slow = tiny_engine("llama", request_timeout_s=0.05, **SETTINGS)
    slow.model.register_forward_pre_hook(lambda *args: time.sleep(0.03))
    with pytest.raises(RequestTimeoutError, match="longer than"):
        slow.generate(DOCS, "Which?", max_new_tokens=30)
    assert not slow.busy


def test_max_new_tokens_limit():
    engine = tiny_engine("llama", max_new_tokens_limit=8, **SETTINGS)
    with pytest.raises(InvalidInputError, match="limit of 8"):
        engine.generate(DOCS, "Which?", max_new_tokens=9)
    assert len(engine.generate(DOCS, "Which?", max_new_tokens=8).token_ids) == 8


def refuse_big_batches(rows_allowed: int, memory: str = "cuda"):
    """A hook that fails forward passes of more rows than `rows_allowed` as running out of GPU
    memory does (`torch.OutOfMemoryError`), or as running out of host memory on CPU does (a real
    allocator failure: torch's `RuntimeError`)."""

    def hook(module, args, kwargs):
        input_ids = kwargs["input_ids"]
        if input_ids.shape[0] > rows_allowed and input_ids.shape[1] > 100:
            if memory == "cpu":
                torch.empty(2**60, dtype=torch.uint8)
            raise torch.OutOfMemoryError("simulated: not enough device memory for this batch")

    return hook


@pytest.mark.parametrize("memory", ["cuda", "cpu"])
def test_out_of_memory_retries_with_smaller_batches(memory):
    engine = tiny_engine("mistral", chunk_batch_size=4, **SETTINGS)
    engine.model.register_forward_pre_hook(refuse_big_batches(1, memory), with_kwargs=True)
    answer = engine.generate(DOCS, "Which?", max_new_tokens=10)
    reference = tiny_engine("mistral", chunk_batch_size=1, **SETTINGS)
    assert answer.token_ids == reference.generate(DOCS, "Which?", max_new_tokens=10).token_ids
    assert answer.stats.chunks_prefilled == 4


@pytest.mark.parametrize("memory", ["cuda", "cpu"])
def test_out_of_memory_at_batch_one_is_an_error_and_the_engine_recovers(memory):
    engine = tiny_engine("mistral", chunk_batch_size=2, **SETTINGS)
    hook = refuse_big_batches(0, memory)
    handle = engine.model.register_forward_pre_hook(hook, with_kwargs=True)
    with pytest.raises(DeviceMemoryError):
        engine.generate(DOCS, "Which?", max_new_tokens=10)
    handle.remove()
    assert not engine.busy
    assert len(engine.generate(DOCS, "Which?", max_new_tokens=5).token_ids) == 5


def test_another_runtime_error_is_not_taken_for_memory():
    engine = tiny_engine("mistral", chunk_batch_size=4, **SETTINGS)

    def hook(module, args, kwargs):
        raise RuntimeError("a bug, not memory")

    handle = engine.model.register_forward_pre_hook(hook, with_kwargs=True)
    with pytest.raises(RuntimeError, match="a bug, not memory"):
        engine.generate(DOCS, "Which?", max_new_tokens=3)
    handle.remove()
    assert len(engine.generate(DOCS, "Which?", max_new_tokens=3).token_ids) == 3


ENGINE = tiny_engine("llama", window=384, max_context_tokens=3000, **SETTINGS)
hostile_text = st.text(alphabet=st.characters(), max_size=400) | st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\u200b" * 50,
        "\r\n" * 100,
        "🙂" * 200,
        "a" * 3100,
        "abc\udc80",
        "<|im_end|>",
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents=st.lists(hostile_text, max_size=6) | hostile_text,
    question=hostile_text,
    max_new_tokens=st.integers(-2, 40),
    stop=st.none() | st.lists(hostile_text, max_size=2),
)
def test_hostile_input_gives_an_answer_or_our_error(documents, question, max_new_tokens, stop):
    try:
        answer = ENGINE.generate(documents, question, max_new_tokens=max_new_tokens, stop=stop)
    except ParallelCompError:
        return
    assert 0 <= len(answer.token_ids) <= max_new_tokens
    assert answer.finish_reason in ("stop", "length")
    assert all(s not in answer.text for s in (stop or []) if s)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunk_tokens=st.none() | st.integers(-5, 600),
    keep_chunks=st.integers(-1, 5) | st.floats(-0.5, 1.5) | st.just(float("nan")),
    kv_budget=st.none() | st.integers(-1, 300),
    pooling_kernel=st.integers(-1, 9),
    window=st.integers(-1, 20),
)
def test_random_settings_build_a_working_engine_or_refuse(
    chunk_tokens, keep_chunks, kv_budget, pooling_kernel, window
):
    try:
        engine = tiny_engine(
            "llama",
            chunk_tokens=chunk_tokens,
            keep_chunks=keep_chunks,
            kv_budget=kv_budget,
            pooling_kernel=pooling_kernel,
            observation_window=window,
        )
    except InvalidConfigError:
        return
    answer = engine.generate(DOCS, "Which?", max_new_tokens=3)
    assert len(answer.token_ids) <= 3


def test_the_process_exits_cleanly_with_a_request_in_flight(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "exit_in_flight.py"
    script.write_text(
        "import time\n"
        "from parallelcomp_llm.testing import text_of_tokens, tiny_engine\n"
        "engine = tiny_engine('llama', max_context_tokens=100_000)\n"
        "docs = [text_of_tokens(400, seed=i) for i in range(100)]\n"
        "stream = engine.stream(docs, 'Q?', max_new_tokens=20)\n"
        "while not engine.busy:\n"
        "    time.sleep(0.01)\n"
        "time.sleep(0.3)\n"
        "print('leaving', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "leaving\n", "")


def test_close_cancels_every_request_and_the_engine_goes_on():
    engine = tiny_engine("llama", **SETTINGS)
    pause = ModelPause(engine.model)
    running = engine.stream(DOCS, "Q1?", max_new_tokens=4)
    pause.wait_until_reached()
    waiting = engine.stream(DOCS[:2], "Q2?", max_new_tokens=4)
    closing = threading.Thread(target=engine.close, kwargs={"timeout_s": 60})
    closing.start()
    deadline = time.monotonic() + 60
    while not (running.cancelled and waiting.cancelled) and time.monotonic() < deadline:
        time.sleep(0.01)
    pause.release()
    closing.join(60)
    assert running.cancelled and waiting.cancelled and not closing.is_alive()
    assert not engine.busy and engine.queue_depth == 0
    assert engine.generate(DOCS, "Q3?", max_new_tokens=4).finish_reason in ("stop", "length")


def test_a_timeout_stops_a_forward_pass_between_layers():
    engine = tiny_engine("llama", request_timeout_s=0.3, **SETTINGS)
    first, second = engine.model.get_decoder().layers
    later_layers: list[int] = []
    first.register_forward_pre_hook(lambda *args: time.sleep(0.8))
    second.register_forward_pre_hook(lambda *args: later_layers.append(1))
    with pytest.raises(RequestTimeoutError):
        engine.generate(DOCS, "Which?", max_new_tokens=4)
    assert later_layers == []
    assert not engine.busy


def test_closing_the_engine_stops_a_forward_pass_between_layers():
    engine = tiny_engine("llama", **SETTINGS)
    first, second = engine.model.get_decoder().layers
    later_layers: list[int] = []
    reached, released = threading.Event(), threading.Event()

    def hold(*args):
        reached.set()
        released.wait(60)

    holding = first.register_forward_pre_hook(hold)
    second.register_forward_pre_hook(lambda *args: later_layers.append(1))
    stream = engine.stream(DOCS, "Which?", max_new_tokens=4)
    assert reached.wait(60)
    closing = threading.Thread(target=engine.close, kwargs={"timeout_s": 60})
    closing.start()
    while not stream.cancelled:
        time.sleep(0.01)
    holding.remove()
    released.set()
    closing.join(60)
    assert later_layers == [] and not closing.is_alive()


def test_a_short_text_is_tokenized_while_a_long_one_is():
    engine = tiny_engine("llama")
    finished: list[str] = []
    long = threading.Thread(
        target=lambda: finished.append(str(engine.count_tokens("hello world. " * 150_000)))
    )
    long.start()
    time.sleep(0.2)
    finished.append(str(engine.count_tokens("a short question")))
    long.join()
    assert finished == ["16", str(13 * 150_000)]
