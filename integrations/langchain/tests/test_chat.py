"""`ChatParallelComp`: the whole conversation goes to the engine's own `chat`, through the chat
template within the trained window, with ParallelComp beyond it or over a `context`."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_parallelcomp import ChatParallelComp

from parallelcomp_llm import InvalidInputError
from parallelcomp_llm.testing import text_of_tokens

MESSAGES = [
    SystemMessage("You are terse."),
    HumanMessage("Hi there"),
    AIMessage("Hello."),
    HumanMessage("Name a colour."),
]
TURNS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a colour."},
]


@pytest.fixture
def chat(engine) -> ChatParallelComp:
    return ChatParallelComp(engine=engine, max_tokens=12)


def test_invoke_applies_the_chat_template(chat, engine):
    answer = engine.chat(TURNS, max_new_tokens=12)
    message = chat.invoke(MESSAGES)
    assert message.content == answer.text
    prompt_ids = engine.tokenizer(
        engine.tokenizer.apply_chat_template(TURNS, tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )["input_ids"]
    assert message.usage_metadata == {
        "input_tokens": len(prompt_ids),
        "output_tokens": len(answer.token_ids),
        "total_tokens": len(prompt_ids) + len(answer.token_ids),
    }
    assert message.response_metadata["finish_reason"] == answer.finish_reason
    assert chat.get_num_tokens_from_messages(MESSAGES) == len(prompt_ids)


def test_stream_and_callbacks_get_each_delta(chat, engine, recorder):
    deltas = list(engine.stream_chat(TURNS, max_new_tokens=12))
    chunks = list(chat.stream(MESSAGES, config={"callbacks": [recorder]}))
    assert [c.content for c in chunks if c.content] == deltas
    assert chunks[-1].chunk_position == "last"
    assert [t for t in recorder.tokens if t] == deltas
    full = sum(chunks[1:], chunks[0])
    assert full.usage_metadata["output_tokens"] == len(
        engine.chat(TURNS, max_new_tokens=12).token_ids
    )


async def test_async_calls_equal_the_engine(chat, engine, recorder, ticker):
    answer = engine.chat(TURNS, max_new_tokens=12)
    message, ticks = await ticker(chat.ainvoke(MESSAGES))
    assert message.content == answer.text
    assert ticks >= 1
    chunks = [c async for c in chat.astream(MESSAGES, config={"callbacks": [recorder]})]
    assert "".join(c.content for c in chunks) == answer.text
    assert [t for t in recorder.tokens if t] == list(engine.stream_chat(TURNS, max_new_tokens=12))
    other = engine.chat([{"role": "user", "content": "Bye"}], max_new_tokens=12)
    assert [m.content for m in await chat.abatch([MESSAGES, "Bye"])] == [answer.text, other.text]


def test_batch_equals_the_engine(chat, engine):
    expected = [
        engine.chat([{"role": "user", "content": q}], max_new_tokens=12).text for q in ("a", "b")
    ]
    assert [m.content for m in chat.batch(["a", "b"])] == expected


def test_stop_sequences_cut_the_output(engine):
    full = engine.chat(TURNS, max_new_tokens=30).text
    stop = full[5:8]
    cut = full[: full.find(stop)]
    chat = ChatParallelComp(engine=engine, max_tokens=30)
    assert chat.invoke(MESSAGES, stop=[stop]).content == cut
    assert "".join(c.content for c in chat.stream(MESSAGES, stop=[stop])) == cut
    assert (
        ChatParallelComp(engine=engine, max_tokens=30, stop=[stop]).invoke(MESSAGES).content == cut
    )


def test_a_chat_beyond_the_trained_window_is_answered_with_parallelcomp(chat, engine):
    text = text_of_tokens(900) + "\n\nName one."
    long = [SystemMessage("You are terse."), HumanMessage(text)]
    turns = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]
    answer = engine.chat(turns, max_new_tokens=12)
    assert answer.stats.chunks_total >= 2
    message = chat.invoke(long)
    assert message.content == answer.text
    assert message.response_metadata["chunks_total"] == answer.stats.chunks_total
    assert "".join(c.content for c in chat.stream(long)) == answer.text


def test_with_context_the_whole_conversation_reaches_the_engine(chat, engine, documents):
    answer = engine.chat(TURNS, context=documents, max_new_tokens=12)
    assert chat.invoke(MESSAGES, context=documents).content == answer.text
    assert chat.bind(context=documents).batch([MESSAGES])[0].content == answer.text


def test_profile_declares_the_window_the_engine_accepts(engine):
    chat = ChatParallelComp(engine=engine)
    assert chat.profile["max_input_tokens"] == chat.context_window == engine.context_window
    assert chat.native_window == engine.native_window == 512
    assert engine.context_window > engine.native_window


def test_token_counting_uses_the_model_tokenizer(chat, engine):
    text = "Grüße aus Köln"
    assert chat.get_num_tokens(text) == engine.count_tokens(text) == len(text.encode())


def test_bad_input_raises_the_engine_errors(chat):
    with pytest.raises(InvalidInputError, match="last message is empty"):
        chat.invoke([HumanMessage("Hi"), AIMessage("")])
    with pytest.raises(InvalidInputError, match="unexpected keyword"):
        chat.invoke("hi", functions=[])
    with pytest.raises(ValueError, match="either `engine` or `model`"):
        ChatParallelComp(engine=chat.engine, model="some/model")
