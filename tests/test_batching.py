"""Requests from different callers that wait for the model together, over the same context, run as
one batch: each caller gets the answer it gets alone, and what happens to one (cancellation,
timeout, out of memory) leaves the others theirs.

Each test first holds the model with a request over another context (`ModelPause`), queues the
requests under test behind it, then lets the model go: the batch is the same on every run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from langchain_parallelcomp import ChatParallelComp
from llama_index.llms.parallelcomp import ParallelCompLLM

from parallelcomp_llm import (
    DeviceMemoryError,
    EngineBusyError,
    InvalidInputError,
    RequestTimeoutError,
)
from parallelcomp_llm.testing import ModelPause, forward_shapes, text_of_tokens, tiny_engine

DOCS = [text_of_tokens(300, seed=i) for i in range(4)]
"""Four chunks: two chunk prefill passes of two rows."""
OTHER = [text_of_tokens(300, seed=10 + i) for i in range(2)]
QUESTIONS = [f"Question {number}: which part?" for number in range(4)]
SETTINGS = {
    "keep_chunks": 2,
    "kv_budget": 96,
    "chunk_batch_size": 2,
    "context_cache_host_fraction": 0.0,
}


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def hold(engine):
    """A request over OTHER held inside its first forward pass; the pause and its stream."""
    pause = ModelPause(engine.model)
    holder = engine.stream(OTHER, "Hold?", max_new_tokens=2)
    pause.wait_until_reached()
    return pause, holder


def chunk_prefills(shapes: list[tuple[int, int]]) -> int:
    return sum(1 for _, tokens in shapes if tokens > 100)


def decoding_rows(shapes: list[tuple[int, int]]) -> list[int]:
    """Rows of each decoding step, without repeats in a row."""
    rows = [count for count, tokens in shapes if tokens == 1]
    return [count for index, count in enumerate(rows) if index == 0 or rows[index - 1] != count]


def drain(stream) -> list[int]:
    for _ in stream:
        pass
    return stream.answer.token_ids


def test_same_context_requests_from_threads_run_as_one_batch():
    engine = tiny_engine("qwen2", **SETTINGS)
    options = [
        {"max_new_tokens": 12},
        {"max_new_tokens": 6, "temperature": 1.0, "seed": 3},
        {"max_new_tokens": 12, "stop": "e"},
        {"max_new_tokens": 9},
    ]
    alone = [engine.generate(DOCS, q, **o) for q, o in zip(QUESTIONS, options, strict=True)]

    def slow_reader(question: str, option: dict) -> tuple[str, list[int]]:
        stream = engine.stream(DOCS, question, **option)
        text = ""
        for delta in stream:
            time.sleep(0.02)
            text += delta
        return text, stream.answer.token_ids

    shapes = forward_shapes(engine.model)
    pause, _ = hold(engine)
    with ThreadPoolExecutor(max_workers=4) as pool:
        slow = pool.submit(slow_reader, QUESTIONS[0], options[0])
        fast = [
            pool.submit(engine.generate, DOCS, q, **o)
            for q, o in zip(QUESTIONS[1:], options[1:], strict=True)
        ]
        wait_for(lambda: engine.queue_depth == 4)
        pause.release()
        text, slow_ids = slow.result()
        together = [future.result() for future in fast]
    assert [slow_ids] + [a.token_ids for a in together] == [a.token_ids for a in alone]
    assert [text] + [a.text for a in together] == [a.text for a in alone]
    assert [a.stats.batch_size for a in together] == [4, 4, 4]
    # the holder's context (one pass), then DOCS once for all four questions (two passes)
    assert chunk_prefills(shapes) == 1 + 2
    assert decoding_rows(shapes)[:2] == [1, 4]
    assert not engine.busy


def test_requests_over_other_contexts_are_not_batched_with_them():
    engine = tiny_engine("llama", **SETTINGS)
    jobs = [(DOCS, "First?"), (DOCS[:2], "Second?"), (DOCS, "Third?"), (DOCS[:2], "Fourth?")]
    alone = [engine.generate(docs, q, max_new_tokens=8).token_ids for docs, q in jobs]
    shapes = forward_shapes(engine.model)
    pause, _ = hold(engine)
    streams = [engine.stream(docs, q, max_new_tokens=8) for docs, q in jobs]
    pause.release()
    assert [drain(stream) for stream in streams] == alone
    assert [stream.answer.stats.batch_size for stream in streams] == [2, 2, 2, 2]
    # holder: one pass; DOCS: two passes for the first and third; DOCS[:2]: one pass
    assert chunk_prefills(shapes) == 1 + 2 + 1
    assert decoding_rows(shapes) == [1, 2]


def test_a_context_cache_and_the_same_documents_share_a_batch_and_the_cache():
    engine = tiny_engine("llama", **SETTINGS)
    cache = engine.encode(DOCS)
    contexts = [DOCS, cache, DOCS]
    alone = [
        engine.generate(context, q, max_new_tokens=8).token_ids
        for context, q in zip(contexts, QUESTIONS, strict=False)
    ]
    shapes = forward_shapes(engine.model)
    pause, _ = hold(engine)
    streams = [
        engine.stream(context, q, max_new_tokens=8)
        for context, q in zip(contexts, QUESTIONS, strict=False)
    ]
    pause.release()
    assert [drain(stream) for stream in streams] == alone
    assert [stream.answer.stats.batch_size for stream in streams] == [3, 3, 3]
    assert chunk_prefills(shapes) == 1  # the holder's: the batch used the cache


@pytest.mark.parametrize("max_batch_requests", [1, 3])
def test_batches_hold_at_most_max_batch_requests_questions(max_batch_requests):
    engine = tiny_engine("llama", max_batch_requests=max_batch_requests, **SETTINGS)
    alone = [engine.generate(DOCS, q, max_new_tokens=6).token_ids for q in QUESTIONS]
    shapes = forward_shapes(engine.model)
    pause, _ = hold(engine)
    streams = [engine.stream(DOCS, q, max_new_tokens=6) for q in QUESTIONS]
    pause.release()
    assert [drain(stream) for stream in streams] == alone
    sizes = [stream.answer.stats.batch_size for stream in streams]
    assert sizes == ([1, 1, 1, 1] if max_batch_requests == 1 else [3, 3, 3, 1])
    assert chunk_prefills(shapes) == 1 + 2 * (4 if max_batch_requests == 1 else 2)


def test_generate_batch_joins_waiting_requests():
    engine = tiny_engine("llama", max_batch_requests=4, **SETTINGS)
    alone = [engine.generate(DOCS, q, max_new_tokens=6).token_ids for q in QUESTIONS]
    pause, _ = hold(engine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        several = pool.submit(engine.generate_batch, DOCS, QUESTIONS[:3], max_new_tokens=6)
        wait_for(lambda: engine.queue_depth == 1)
        single = engine.stream(DOCS, QUESTIONS[3], max_new_tokens=6)
        pause.release()
        answers = several.result()
    assert [a.token_ids for a in answers] + [drain(single)] == alone
    assert [a.stats.batch_size for a in answers] == [4, 4, 4]
    assert single.answer.stats.batch_size == 4


def test_a_generate_batch_longer_than_max_batch_requests_runs_in_consecutive_batches():
    engine = tiny_engine("llama", max_batch_requests=2, **SETTINGS)
    alone = [engine.generate(DOCS, q, max_new_tokens=6).token_ids for q in QUESTIONS[:3]]
    shapes = forward_shapes(engine.model)
    answers = engine.generate_batch(DOCS, QUESTIONS[:3], max_new_tokens=6)
    assert [a.token_ids for a in answers] == alone
    assert [a.stats.batch_size for a in answers] == [2, 2, 1]
    assert max(rows for rows, tokens in shapes if tokens == 1) == 2
    assert chunk_prefills(shapes) == 2 * 2


@pytest.mark.parametrize(
    "bad",
    [{"temperature": float("nan")}, {"seed": 2**63}, {"top_k": True}, {"stop": 5}, {"x": 1}],
    ids=["nan-temperature", "huge-seed", "bool-top-k", "int-stop", "unknown-keyword"],
)
def test_a_bad_option_is_refused_at_the_call_and_its_batch_goes_on(bad):
    engine = tiny_engine("llama", **SETTINGS)
    alone = [engine.generate(DOCS, q, max_new_tokens=6).token_ids for q in QUESTIONS[:2]]
    pause, _ = hold(engine)
    streams = [engine.stream(DOCS, q, max_new_tokens=6) for q in QUESTIONS[:2]]
    with pytest.raises(InvalidInputError):
        engine.stream(DOCS, QUESTIONS[2], max_new_tokens=6, **bad)
    assert engine.queue_depth == 2
    pause.release()
    assert [drain(stream) for stream in streams] == alone
    assert [stream.answer.stats.batch_size for stream in streams] == [2, 2]


def test_a_full_line_refuses_and_the_waiting_requests_still_share_a_batch():
    engine = tiny_engine("llama", max_waiting_requests=2, **SETTINGS)
    pause, _ = hold(engine)
    streams = [engine.stream(DOCS, q, max_new_tokens=6) for q in QUESTIONS[:2]]
    with pytest.raises(EngineBusyError):
        engine.stream(DOCS, QUESTIONS[2], max_new_tokens=6)
    streams[1].close()
    third = engine.stream(DOCS, QUESTIONS[2], max_new_tokens=6)
    pause.release()
    answers = [drain(streams[0]), drain(third)]
    assert answers == [engine.generate(DOCS, q, max_new_tokens=6).token_ids for q in QUESTIONS[::2]]
    assert streams[0].answer.stats.batch_size == 2
    assert not engine.busy


def test_a_member_that_closes_its_stream_leaves_the_others_their_answers():
    engine = tiny_engine("llama", **SETTINGS)
    alone = [engine.generate(DOCS, q, max_new_tokens=20).token_ids for q in QUESTIONS[:3]]
    pause, _ = hold(engine)
    streams = [engine.stream(DOCS, q, max_new_tokens=20) for q in QUESTIONS[:3]]
    in_batch = ModelPause(engine.model, when=lambda input_ids: input_ids.shape == (3, 1))
    pause.release()
    in_batch.wait_until_reached()
    closer = threading.Thread(target=streams[1].close)
    closer.start()
    wait_for(lambda: streams[1].cancelled)
    in_batch.release()
    closer.join(60)
    assert not closer.is_alive()
    assert list(streams[1]) == [] and streams[1].answer is None
    assert [drain(streams[0]), drain(streams[2])] == [alone[0], alone[2]]
    assert not engine.busy


def test_closing_the_only_request_of_a_batch_stops_it_at_the_next_forward_pass():
    engine = tiny_engine("llama", **SETTINGS)
    pause = ModelPause(engine.model)
    stream = engine.stream(DOCS, "Which?", max_new_tokens=20)
    pause.wait_until_reached()
    shapes = forward_shapes(engine.model)  # not called for the held pass
    closer = threading.Thread(target=stream.close)
    closer.start()
    wait_for(lambda: stream.cancelled)
    pause.release()
    closer.join(60)
    assert not closer.is_alive()
    assert not engine.busy
    # after the held chunk prefill nothing ran: no question pass, no second chunk batch, no
    # decoding
    assert shapes == []
    assert len(engine.generate(DOCS, "Which?", max_new_tokens=5).token_ids) == 5


def test_a_member_past_its_deadline_fails_alone():
    engine = tiny_engine("llama", **SETTINGS)
    alone = [engine.generate(DOCS, q, max_new_tokens=20).token_ids for q in QUESTIONS[:2]]
    pause, _ = hold(engine)
    timeout = 5.0  # long enough for the batch to start first, however busy the machine
    submitted = time.monotonic()
    early = engine.stream(DOCS, "Which?", max_new_tokens=20, timeout_s=timeout)
    late = [engine.stream(DOCS, q, max_new_tokens=20) for q in QUESTIONS[:2]]
    in_batch = ModelPause(engine.model, when=lambda input_ids: input_ids.shape == (3, 1))
    pause.release()
    try:
        in_batch.wait_until_reached()
        # its time runs out during the held step
        time.sleep(max(0.0, submitted + timeout + 0.1 - time.monotonic()))
    finally:
        in_batch.release()
    with pytest.raises(RequestTimeoutError, match="took longer than"):
        drain(early)
    assert [drain(stream) for stream in late] == alone
    assert not engine.busy


def refuse_rows(limit: int, tokens: int | None = None, allowed: int = 0):
    """A forward hook that runs out of memory on passes of more than `limit` rows (of `tokens`
    tokens, when given), once `allowed` of them have run."""
    seen = 0

    def hook(module, args, kwargs):
        nonlocal seen
        rows, width = kwargs["input_ids"].shape
        if rows > limit and tokens in (None, width):
            seen += 1
            if seen > allowed:
                raise torch.OutOfMemoryError("simulated: not enough device memory for this batch")

    return hook


def test_a_batch_out_of_memory_before_any_answer_runs_again_one_by_one():
    settings = SETTINGS | {"chunk_batch_size": 1}
    engine = tiny_engine("mistral", **settings)
    alone = [engine.generate(DOCS, q, max_new_tokens=8).token_ids for q in QUESTIONS[:3]]
    pause, _ = hold(engine)
    streams = [engine.stream(DOCS, q, max_new_tokens=8) for q in QUESTIONS[:3]]
    handle = engine.model.register_forward_pre_hook(refuse_rows(1), with_kwargs=True)
    pause.release()
    assert [drain(stream) for stream in streams] == alone
    assert [stream.answer.stats.batch_size for stream in streams] == [1, 1, 1]
    handle.remove()


def test_a_batch_out_of_memory_while_decoding_fails_each_member_and_the_engine_recovers():
    engine = tiny_engine("mistral", **SETTINGS)
    pause, _ = hold(engine)
    streams = [engine.stream(DOCS, q, max_new_tokens=16) for q in QUESTIONS[:2]]
    # Late in decoding, once both rows have handed out text (partial UTF-8 is held back).
    refuse = refuse_rows(1, tokens=1, allowed=12)
    handle = engine.model.register_forward_pre_hook(refuse, with_kwargs=True)
    pause.release()
    for stream in streams:
        received = []
        with pytest.raises(DeviceMemoryError):
            received.extend(stream)
        assert received  # text was handed out, so the batch could not run again
    handle.remove()
    assert not engine.busy
    assert len(engine.generate(DOCS, "Which?", max_new_tokens=5).token_ids) == 5


def test_langchain_and_llama_index_callers_share_a_batch():
    engine = tiny_engine("llama", **SETTINGS)
    chat = ChatParallelComp(engine=engine, max_tokens=8)
    llm = ParallelCompLLM(engine=engine, max_tokens=8)
    alone = [chat.invoke(q, context=DOCS).content for q in QUESTIONS[:2]]
    alone += [llm.complete(q, context=DOCS).text for q in QUESTIONS[2:]]

    async def everyone() -> list[str]:
        langchain = chat.abatch(QUESTIONS[:2], context=DOCS)
        llama_index = [llm.acomplete(q, context=DOCS) for q in QUESTIONS[2:]]
        messages, *completions = await asyncio.gather(langchain, *llama_index)
        return [m.content for m in messages] + [c.text for c in completions]

    shapes = forward_shapes(engine.model)
    pause, _ = hold(engine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        together = pool.submit(asyncio.run, everyone())
        wait_for(lambda: engine.queue_depth == 4)
        pause.release()
        assert together.result() == alone
    assert chunk_prefills(shapes) == 1 + 2
    assert decoding_rows(shapes)[:2] == [1, 4]


def test_async_callers_cancelled_while_waiting_leave_the_line_at_once():
    engine = tiny_engine("llama", **SETTINGS)
    chat = ChatParallelComp(engine=engine, max_tokens=8)
    llm = ParallelCompLLM(engine=engine, max_tokens=8)
    shapes = forward_shapes(engine.model)
    pause, _ = hold(engine)

    async def cancel_while_waiting(call) -> None:
        task = asyncio.ensure_future(call)
        while engine.queue_depth == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for call in (
        chat.ainvoke(QUESTIONS[0], context=DOCS),
        chat.astream(QUESTIONS[1], context=DOCS).__anext__(),
        llm.acomplete(QUESTIONS[2], context=DOCS),
    ):
        asyncio.run(cancel_while_waiting(call))
        # the model is still held: only cancelling can empty the line
        wait_for(lambda: engine.queue_depth == 0)
    pause.release()
    assert llm.complete(QUESTIONS[3], context=DOCS).raw["answer"].stats.chunks_prefilled == 4
    # the holder's context, then DOCS once, for the last call: the cancelled ones never ran
    assert chunk_prefills(shapes) == 1 + 2
