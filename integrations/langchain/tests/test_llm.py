"""`ParallelCompLLM` without context: an ordinary LLM, equal to the engine's own `complete` (within
the trained window and beyond it)."""

from __future__ import annotations

import pytest
from langchain_parallelcomp import ParallelCompLLM

from parallelcomp_llm import InvalidInputError
from parallelcomp_llm.testing import text_of_tokens

PROMPT = "The weather today is"
OTHER = "Once upon a time"


@pytest.fixture
def llm(engine) -> ParallelCompLLM:
    return ParallelCompLLM(engine=engine, max_tokens=12)


def expected(engine, prompt: str = PROMPT, **kwargs):
    return engine.complete(prompt, max_new_tokens=kwargs.pop("max_new_tokens", 12), **kwargs)


def test_invoke_returns_only_the_engine_continuation(llm, engine):
    answer = expected(engine)
    assert llm.invoke(PROMPT) == answer.text
    assert PROMPT not in llm.invoke(PROMPT)


def test_batch_is_one_generate_call(llm, engine):
    answers = [expected(engine, PROMPT), expected(engine, OTHER)]
    assert llm.batch([PROMPT, OTHER]) == [a.text for a in answers]
    result = llm.generate([PROMPT, OTHER])
    assert [g[0].text for g in result.generations] == [a.text for a in answers]
    assert result.llm_output["token_usage"]["completion_tokens"] == sum(
        len(a.token_ids) for a in answers
    )
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == answers[0].finish_reason
    assert info["model_name"] == llm.model_name


def test_stream_yields_the_engine_deltas_and_callbacks_get_each(llm, engine, recorder):
    deltas = list(engine.stream_complete(PROMPT, max_new_tokens=12))
    streamed = list(llm.stream(PROMPT, config={"callbacks": [recorder]}))
    assert [s for s in streamed if s] == deltas
    assert recorder.tokens == deltas
    assert recorder.results[0].generations[0][0].text == "".join(deltas)


def test_streaming_flag_sends_tokens_to_callbacks_on_invoke(engine, recorder):
    llm = ParallelCompLLM(engine=engine, max_tokens=12, streaming=True)
    assert llm.invoke(PROMPT, config={"callbacks": [recorder]}) == expected(engine).text
    assert recorder.tokens == list(engine.stream_complete(PROMPT, max_new_tokens=12))


async def test_ainvoke_abatch_astream_equal_the_engine(llm, engine, recorder):
    answer, other = expected(engine), expected(engine, OTHER)
    assert await llm.ainvoke(PROMPT) == answer.text
    assert await llm.abatch([PROMPT, OTHER]) == [answer.text, other.text]
    chunks = [c async for c in llm.astream(PROMPT, config={"callbacks": [recorder]})]
    assert "".join(chunks) == answer.text
    assert recorder.tokens == list(engine.stream_complete(PROMPT, max_new_tokens=12))


async def test_async_calls_leave_the_event_loop_running(engine, documents, ticker):
    llm = ParallelCompLLM(engine=engine, max_tokens=32).bind(context=documents)
    text, ticks = await ticker(llm.ainvoke("Q?"))
    assert text == engine.generate(documents, "Q?", max_new_tokens=32).text
    assert ticks >= 3

    async def streamed() -> str:
        return "".join([chunk async for chunk in llm.astream("Q?")])

    text, ticks = await ticker(streamed())
    assert text == engine.generate(documents, "Q?", max_new_tokens=32).text
    assert ticks >= 3


def test_stop_sequences_cut_the_output(engine):
    full = expected(engine, max_new_tokens=30).text
    stop = full[6:9]  # three tokens of the byte-level tokenizer
    cut = full[: full.find(stop)]
    llm = ParallelCompLLM(engine=engine, max_tokens=30)
    assert llm.invoke(PROMPT, stop=[stop]) == cut
    assert "".join(llm.stream(PROMPT, stop=[stop])) == cut
    assert ParallelCompLLM(engine=engine, max_tokens=30, stop=[stop]).invoke(PROMPT) == cut


def test_token_counting_uses_the_model_tokenizer(llm, engine):
    text = "Grüße aus Köln – 12345 tokens?"
    assert llm.get_num_tokens(text) == engine.count_tokens(text) == len(text.encode())
    assert llm.get_token_ids(text) == engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_settings_are_pydantic_fields_and_reach_the_engine(engine):
    llm = ParallelCompLLM(engine=engine, max_tokens=5, temperature=0.8, top_k=20, seed=7)
    sampled = engine.complete(PROMPT, max_new_tokens=5, temperature=0.8, top_k=20, seed=7)
    assert llm.invoke(PROMPT) == sampled.text
    assert llm._identifying_params["engine_config"] == engine.config.model_dump()
    with pytest.raises(ValueError):
        ParallelCompLLM(engine=engine, temperature=-1)


def test_a_prompt_beyond_the_trained_window_is_answered_with_parallelcomp(llm, engine):
    long = text_of_tokens(900) + "\n\nName one."
    answer = expected(engine, long)
    assert answer.stats.chunks_total >= 2
    assert llm.invoke(long) == answer.text
    info = llm.generate([long]).generations[0][0].generation_info
    assert info["chunks_total"] == answer.stats.chunks_total
    assert llm.context_window == engine.context_window
    assert llm.native_window == engine.native_window == 512


def test_bad_calls_raise_the_engine_errors(llm):
    with pytest.raises(InvalidInputError):
        llm.invoke("   ")
    with pytest.raises(InvalidInputError, match="unexpected keyword"):
        llm.invoke(PROMPT, max_length=3)


async def test_leaving_a_stream_early_frees_the_engine(llm, engine):
    for _ in llm.stream(PROMPT):
        break
    async for _ in llm.astream(PROMPT):
        break
    assert llm.invoke(OTHER) == expected(engine, OTHER).text
    assert await llm.ainvoke(OTHER) == expected(engine, OTHER).text
