"""LangChain's `ChatOpenAI` and LlamaIndex's `OpenAILike` pointed at a real `parallelcomp serve`
app (uvicorn, tiny model): their answers, streams and tool calls are the engine's, and the
corpus goes beside the messages as `extra_body={"documents": [...]}` (docs/serving.md)."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike

from parallelcomp_llm.server import ServerSettings, create_app
from parallelcomp_llm.server.testing import WEATHER_TOOL, RunningServer
from parallelcomp_llm.testing import text_of_tokens, tiny_engine

pytestmark = pytest.mark.serving

MODEL = "tiny-llama"
DOCS = [text_of_tokens(500, seed=index) for index in range(3)]
DOCUMENTS = [{"title": f"Part {index}", "text": text} for index, text in enumerate(DOCS)]
TITLED = [f"Part {index}\n\n{text}" for index, text in enumerate(DOCS)]
QUESTION = "Which letter comes first?"
ASK = [{"role": "user", "content": QUESTION}]
WEATHER = WEATHER_TOOL


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(
        window=2048, chunk_tokens=512, answer_reserve_tokens=64, question_reserve_tokens=640
    )


@pytest.fixture(scope="module")
def base_url(engine):
    with RunningServer(create_app(engine, ServerSettings(model_name=MODEL))) as server:
        yield server.url + "/v1"


@pytest.fixture(scope="module")
def expected(engine):
    answer = engine.chat(ASK, context=TITLED, max_new_tokens=8)
    assert answer.text != engine.chat(ASK, max_new_tokens=8).text, "the documents change nothing"
    return answer


def chat_openai(base_url: str, **fields) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL, base_url=base_url, api_key="unused", temperature=0, max_retries=0, **fields
    )


def openai_like(base_url: str, chat: bool = True, **fields) -> OpenAILike:
    return OpenAILike(
        model=MODEL,
        api_base=base_url,
        api_key="unused",
        is_chat_model=chat,
        context_window=8192,
        temperature=0.0,
        max_retries=0,
        **fields,
    )


# -- LangChain ------------------------------------------------------------------------------


def test_langchain_chat_openai_answers_over_documents(base_url, expected):
    model = chat_openai(base_url, max_tokens=8, extra_body={"documents": DOCUMENTS})
    reply = model.invoke([HumanMessage(QUESTION)])
    assert reply.content == expected.text
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata["input_tokens"] == expected.stats.input_tokens
    assert reply.usage_metadata["output_tokens"] == 8


def test_langchain_streams_join_to_the_answer_with_usage(base_url, expected):
    model = chat_openai(base_url, max_tokens=8, stream_usage=True)
    chunks = list(model.stream(QUESTION, extra_body={"documents": DOCUMENTS}))
    assert "".join(chunk.content for chunk in chunks) == expected.text
    assert len(chunks) > 3
    usage = sum(chunks[1:], chunks[0]).usage_metadata
    assert usage["input_tokens"] == expected.stats.input_tokens and usage["output_tokens"] == 8


async def test_langchain_async_calls_answer_the_same(base_url, expected):
    model = chat_openai(base_url, max_tokens=8, extra_body={"documents": DOCUMENTS})
    replies = [await model.ainvoke(QUESTION) for _ in range(2)]
    assert [reply.content for reply in replies] == [expected.text] * 2
    streamed = [chunk.content async for chunk in model.astream(QUESTION)]
    assert "".join(streamed) == expected.text


def test_langchain_bound_tools_come_back_as_tool_calls(base_url, engine):
    model = chat_openai(base_url, max_tokens=160).bind_tools([WEATHER], tool_choice="get_weather")
    reply = model.invoke(QUESTION)
    [call] = reply.tool_calls
    made = engine.chat(ASK, tools=[WEATHER], tool_choice="get_weather", max_new_tokens=160)
    assert call["name"] == "get_weather" and call["args"] == made.tool_calls[0].arguments
    assert reply.response_metadata["finish_reason"] == "tool_calls"


# -- LlamaIndex -----------------------------------------------------------------------------


def test_llama_index_openai_like_chats_over_documents(base_url, expected):
    llm = openai_like(
        base_url, max_tokens=8, additional_kwargs={"extra_body": {"documents": DOCUMENTS}}
    )
    reply = llm.chat([ChatMessage(role="user", content=QUESTION)])
    assert reply.message.content == expected.text
    assert reply.raw.usage.prompt_tokens == expected.stats.input_tokens


def test_llama_index_streams_and_per_call_documents(base_url, expected):
    llm = openai_like(base_url, max_tokens=8)
    messages = [ChatMessage(role="user", content=QUESTION)]
    deltas = [r.delta for r in llm.stream_chat(messages, extra_body={"documents": DOCUMENTS})]
    assert "".join(deltas) == expected.text and len(deltas) > 3


async def test_llama_index_async_chat(base_url, expected):
    llm = openai_like(
        base_url, max_tokens=8, additional_kwargs={"extra_body": {"documents": DOCUMENTS}}
    )
    reply = await llm.achat([ChatMessage(role="user", content=QUESTION)])
    assert reply.message.content == expected.text


def test_llama_index_completion_model_uses_v1_completions(base_url, engine):
    llm = openai_like(base_url, chat=False, max_tokens=7)
    completed = llm.complete("Once upon a time")
    assert completed.text == engine.complete("Once upon a time", max_new_tokens=7).text
