"""LlamaIndex's own query engines (every response mode) and chat engines (every chat mode without
agents) over `ParallelCompLLM`: over a corpus of three trained windows each answers, its LLM calls
reading the whole corpus with ParallelComp; over a corpus above the engine's limit each raises
`ContextTooLongError` to the caller, and a request the engine refuses raises `InvalidInputError`."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document, SummaryIndex
from llama_index.llms.parallelcomp import ParallelCompLLM

from parallelcomp_llm import ContextTooLongError, InvalidInputError
from parallelcomp_llm.testing import passkey_haystack, tiny_engine

QUESTION = "Which part matters?"


@pytest.fixture(scope="module")
def corpus(wide_engine) -> str:
    """Three of the wide engine's trained windows of English text (a pass-key haystack)."""
    window = wide_engine.native_window
    text = passkey_haystack(3 * window + 100, 0.5, 41307, wide_engine.count_tokens)
    assert wide_engine.count_tokens(text) >= 3 * window == 3 * 2048
    return text


def test_every_pipeline_answers_over_three_trained_windows(
    wide_engine, corpus, pipeline, llm_answers
):
    llm = ParallelCompLLM(engine=wide_engine, max_new_tokens=12)
    index = SummaryIndex.from_documents([Document(text=corpus)])

    answer = pipeline(index, llm, corpus, QUESTION)

    assert answer.strip() and answer != "Empty Response"
    answers = llm_answers()
    assert answers and answers[-1].text == answer
    # The calls got the corpus as context (nodes overlap a little), none of it truncated.
    assert sum(a.stats.context_tokens for a in answers) >= wide_engine.count_tokens(corpus)


def test_chat_engines_answer_a_second_turn(wide_engine, corpus, llm_answers):
    llm = ParallelCompLLM(engine=wide_engine, max_new_tokens=12)
    index = SummaryIndex.from_documents([Document(text=corpus)])
    for mode in ("context", "condense_plus_context"):
        chat_engine = index.as_chat_engine(chat_mode=mode, llm=llm)
        first = str(chat_engine.chat(QUESTION))
        second = str(chat_engine.chat("And which part after it?"))
        assert first.strip() and second.strip() and "Empty Response" not in (first, second)
        assert [m.content for m in chat_engine.chat_history][1::2] == [first, second]


def test_streaming_and_async_query_and_chat_engines_answer(wide_engine, corpus):
    llm = ParallelCompLLM(engine=wide_engine, max_new_tokens=12)
    index = SummaryIndex.from_documents([Document(text=corpus)])
    plain = str(index.as_query_engine(llm=llm).query(QUESTION))
    streamed = index.as_query_engine(llm=llm, streaming=True).query(QUESTION)
    assert "".join(streamed.response_gen) == plain

    async def run() -> tuple[str, str]:
        answered = await index.as_query_engine(llm=llm, response_mode="tree_summarize").aquery(
            QUESTION
        )
        chat = await index.as_chat_engine(chat_mode="context", llm=llm).astream_chat(QUESTION)
        return str(answered), "".join([token async for token in chat.async_response_gen()])

    tree, chat = asyncio.run(run())
    assert tree == str(
        index.as_query_engine(llm=llm, response_mode="tree_summarize").query(QUESTION)
    )
    assert chat == str(index.as_chat_engine(chat_mode="context", llm=llm).chat(QUESTION))


@pytest.mark.parametrize(
    "limit, error, message",
    [
        # LlamaIndex packs prompts by its own token count (tiktoken unless Settings.tokenizer is
        # set): a quarter of the byte-level tokenizer's, so each prompt's context is over the limit.
        ({"max_context_tokens": 1024}, ContextTooLongError, "more than max_context_tokens=1024"),
        # refine and its relatives take a ValueError for the model's formatting mistake and
        # answer "Empty Response": the engine's InvalidInputError is not one.
        ({"max_new_tokens_limit": 8}, InvalidInputError, "over this engine's limit of 8"),
    ],
    ids=["context-over-the-limit", "request-refused"],
)
def test_an_engine_error_raises_in_every_pipeline(corpus, pipeline, limit, error, message):
    engine = tiny_engine(
        "llama", window=2048, question_reserve_tokens=200, chunk_room_fraction=0.5, **limit
    )
    llm = ParallelCompLLM(engine=engine, max_new_tokens=12)
    index = SummaryIndex.from_documents([Document(text=corpus)])
    with pytest.raises(error, match=message):
        pipeline(index, llm, corpus, QUESTION)
