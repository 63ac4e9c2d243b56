"""Tool calling and structured output of `ChatParallelComp` on the tiny random engine: the answers
are random, so the tests check their structure (a valid call of an allowed tool, a value of the
schema, the engine's answer to the same chat), not their meaning."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_parallelcomp import ChatParallelComp
from pydantic import BaseModel, Field

from parallelcomp_llm import InvalidInputError, ParallelCompEngine, ToolSet
from parallelcomp_llm.testing import (
    TEXT_THEN_CLOCK_CALL,
    ScriptedAnswer,
    forward_shapes,
    text_of_tokens,
    tiny_engine,
)

MAX_TOKENS = 160
ASK = "Where is order 42?"


class Person(BaseModel):
    """A person to greet."""

    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=99)
    colour: Literal["red", "green", "blue"]
    happy: bool


class PersonDict(TypedDict):
    """A person to greet (fields of bounded length: a TypedDict cannot bound a string)."""

    colour: Annotated[Literal["red", "green", "blue"], ..., "favourite colour"]
    happy: bool


@tool
def lookup_order(order: Annotated[str, Field(max_length=6)], rush: bool) -> str:
    """Look up the status of an order."""
    return f"order {order} shipped"


@tool
def cancel_order(order: Annotated[str, Field(max_length=6)]) -> str:
    """Cancel an order."""
    return f"order {order} cancelled"


@pytest.fixture(scope="module")
def engine() -> ParallelCompEngine:
    """A tiny engine with room for the tools' descriptions (long in the byte-level tokenizer)."""
    return tiny_engine(window=2048, answer_reserve_tokens=160, question_reserve_tokens=640)


@pytest.fixture
def chat(engine) -> ChatParallelComp:
    return ChatParallelComp(engine=engine, max_tokens=MAX_TOKENS)


def check_person(person: Any) -> None:
    assert isinstance(person, Person)
    assert len(person.name) <= 12 and 0 <= person.age <= 99
    assert person.colour in {"red", "green", "blue"} and isinstance(person.happy, bool)


def check_order_call(call: dict[str, Any], name: str = "lookup_order") -> None:
    assert call["name"] == name and call["type"] == "tool_call" and call["id"].startswith("call_")
    expected = {"order", "rush"} if name == "lookup_order" else {"order"}
    assert set(call["args"]) == expected
    assert isinstance(call["args"]["order"], str) and len(call["args"]["order"]) <= 6


def merged(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    return sum(chunks[1:], chunks[0])


def without_ids(calls: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The calls' names and arguments (each answer gives its calls new ids)."""
    return [(call["name"], call["args"]) for call in calls]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_is_a_validated_instance(chat, method):
    person = chat.with_structured_output(Person, method=method).invoke("Describe a person.")
    check_person(person)
    raw = chat.with_structured_output(Person, method=method, include_raw=True)
    result = raw.invoke("Describe a person.")
    assert set(result) == {"raw", "parsed", "parsing_error"}
    assert result["parsing_error"] is None and result["parsed"] == person
    message = result["raw"]
    assert isinstance(message, AIMessage)
    if method == "json_schema":
        assert json.loads(message.content) == person.model_dump()
        assert message.tool_calls == []
    else:
        assert message.content == ""
        assert without_ids(message.tool_calls) == [("Person", person.model_dump())]


async def test_structured_output_streams_the_instance(chat):
    structured = chat.with_structured_output(Person)
    streamed = list(structured.stream("Describe a person."))
    assert streamed and streamed[-1] == structured.invoke("Describe a person.")
    check_person(streamed[-1])
    assert [value async for value in structured.astream("Describe a person.")][-1] == streamed[-1]
    assert await structured.ainvoke("Describe a person.") == streamed[-1]


@pytest.mark.parametrize("schema", [PersonDict, convert_to_json_schema(PersonDict)])
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_typed_dicts_and_json_schemas_give_dicts_of_the_schema(chat, schema, method):
    value = chat.with_structured_output(schema, method=method).invoke("Describe a person.")
    assert isinstance(value, dict) and set(value) == {"colour", "happy"}
    assert value["colour"] in {"red", "green", "blue"} and isinstance(value["happy"], bool)


def test_json_mode_answers_a_json_object(chat, engine):
    result = chat.with_structured_output(Person, method="json_mode", include_raw=True).invoke(
        "Describe a person as JSON."
    )
    expected = engine.chat(
        [{"role": "user", "content": "Describe a person as JSON."}],
        response_format={"type": "json_object"},
        max_new_tokens=MAX_TOKENS,
    )
    assert result["raw"].content == expected.text and expected.text.startswith("{")
    # The random model writes one key until max_tokens: a cut object, which fails to parse.
    assert result["raw"].response_metadata["finish_reason"] == "length"
    assert result["parsed"] is None
    assert isinstance(result["parsing_error"], OutputParserException)


@pytest.mark.parametrize("schema", [Person, PersonDict])
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_a_value_cut_by_max_tokens_is_a_parsing_error(chat, schema, method):
    cut = {"method": method, "max_tokens": 8}
    result = chat.with_structured_output(schema, include_raw=True, **cut).invoke("Describe.")
    assert result["raw"].response_metadata["finish_reason"] == "length"
    assert result["parsed"] is None
    assert isinstance(result["parsing_error"], OutputParserException)
    assert "reached max_tokens" in str(result["parsing_error"])
    structured = chat.with_structured_output(schema, **cut)
    with pytest.raises(OutputParserException, match="reached max_tokens"):
        structured.invoke("Describe.")
    with pytest.raises(OutputParserException, match="reached max_tokens"):
        list(structured.stream("Describe."))


class OptionsRecorder(BaseCallbackHandler):
    """Keeps the `options` LangChain reports at the start of each chat model run."""

    def __init__(self) -> None:
        self.options: list[dict[str, Any]] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.options.append(kwargs.get("options") or {})


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_traces_get_the_structured_output_format(chat, method):
    recorder = OptionsRecorder()
    structured = chat.with_structured_output(Person, method=method, include_raw=True)
    structured.invoke("Describe a person.", config={"callbacks": [recorder]})
    [options] = recorder.options
    assert options["ls_structured_output_format"] == {
        "kwargs": {"method": method, "strict": None},
        "schema": convert_to_json_schema(Person),
    }


@pytest.mark.parametrize("choice", ["any", True, "required", "cancel_order"])
def test_a_forced_call_is_a_valid_call_of_an_allowed_tool(chat, choice):
    message = chat.bind_tools([lookup_order, cancel_order], tool_choice=choice).invoke(ASK)
    assert isinstance(message, AIMessage) and message.content == ""
    [call] = message.tool_calls
    if choice == "cancel_order":
        check_order_call(call, "cancel_order")
    else:
        check_order_call(call, call["name"])


def test_streaming_with_tools_emits_the_calls_in_the_last_chunk(chat):
    bound = chat.bind_tools([lookup_order, cancel_order], tool_choice="lookup_order")
    invoked = bound.invoke(ASK)
    chunks = list(bound.stream(ASK))
    assert all(chunk.content == "" for chunk in chunks)
    assert all(not chunk.tool_call_chunks for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.chunk_position == "last" and [c["index"] for c in last.tool_call_chunks] == [0]
    full = merged(chunks)
    assert without_ids(full.tool_calls) == without_ids(invoked.tool_calls)
    check_order_call(full.tool_calls[0])
    assert full.tool_calls[0]["id"] == last.tool_call_chunks[0]["id"]


async def test_async_streaming_with_tools_equals_invoke(chat):
    bound = chat.bind_tools([lookup_order], tool_choice="any")
    invoked = await bound.ainvoke(ASK)
    full = merged([chunk async for chunk in bound.astream(ASK)])
    assert full.content == invoked.content == ""
    assert without_ids(full.tool_calls) == without_ids(invoked.tool_calls)
    check_order_call(full.tool_calls[0])


def test_unforced_tools_stream_the_text_as_it_comes(chat, engine):
    bound = chat.bind_tools([lookup_order])
    chunks = list(bound.stream(ASK))
    expected = engine.chat(
        [{"role": "user", "content": ASK}],
        tools=[convert_to_openai_tool(lookup_order)],
        max_new_tokens=MAX_TOKENS,
    )
    assert len([chunk for chunk in chunks if chunk.content]) > 1
    assert merged(chunks).content == bound.invoke(ASK).content == expected.text


async def test_a_call_after_text_streams_the_text_first_and_no_markup(chat, engine):
    @tool
    def get_time() -> str:
        """The time now."""
        return "12:00"

    bound = chat.bind_tools([get_time])
    with ScriptedAnswer(engine.model, engine.tokenizer, TEXT_THEN_CLOCK_CALL):
        chunks = list(bound.stream("What time is it?"))
        achunks = [chunk async for chunk in bound.astream("What time is it?")]
    for streamed in (chunks, achunks):
        texts = [chunk.content for chunk in streamed[:-1]]
        assert "".join(texts) == "Let me look.\n" and len(texts) > 2
        assert not any("<" in text for text in texts)
        assert all(not chunk.tool_call_chunks for chunk in streamed[:-1])
        last = streamed[-1]
        assert last.chunk_position == "last" and last.content == ""
        [call] = merged(streamed).tool_calls
        assert call["name"] == "get_time" and call["args"] == {}
        assert call["id"] == last.tool_call_chunks[0]["id"]


def test_tool_calls_and_results_reach_the_engine_as_openai_turns(chat, engine):
    call = {"name": "lookup_order", "args": {"order": "42", "rush": False}, "id": "call_1"}
    history = [
        HumanMessage(ASK),
        AIMessage("", tool_calls=[call]),
        ToolMessage("order 42 shipped", tool_call_id="call_1"),
    ]
    turns = [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": call["args"]},
                }
            ],
        },
        {"role": "tool", "content": "order 42 shipped", "tool_call_id": "call_1"},
    ]
    tools = [convert_to_openai_tool(lookup_order)]
    expected = engine.chat(turns, tools=tools, max_new_tokens=MAX_TOKENS)
    assert chat.bind_tools([lookup_order]).invoke(history).content == expected.text
    prompt_ids = engine.prompts.chat_prompt_ids(turns, ToolSet(tools))
    assert chat.get_num_tokens_from_messages(history, tools=[lookup_order]) == len(prompt_ids)
    assert chat.get_num_tokens_from_messages(history) < len(prompt_ids)


@wrap_model_call
def call_a_tool_first(request: ModelRequest, handler) -> ModelResponse:
    """Force a tool call until a tool has answered (the random model would never call one)."""
    if not any(isinstance(message, ToolMessage) for message in request.state["messages"]):
        request = request.override(tool_choice="any")
    return handler(request)


def test_an_agent_calls_the_tool_and_answers_with_its_result(chat):
    agent = create_agent(chat, tools=[lookup_order], middleware=[call_a_tool_first])
    messages = agent.invoke({"messages": [HumanMessage(ASK)]})["messages"]
    assert [type(message) for message in messages] == [
        HumanMessage,
        AIMessage,
        ToolMessage,
        AIMessage,
    ]
    [call] = messages[1].tool_calls
    check_order_call(call)
    assert messages[2].tool_call_id == call["id"]
    assert messages[2].content == f"order {call['args']['order']} shipped"
    assert messages[3].tool_calls == []


def test_an_agent_with_tools_and_a_response_format_ends_in_the_schema(chat, engine):
    """The provider strategy binds the tools and the schema together: each answer is calls or
    the schema's JSON (here the random model's greedy answer is the JSON at once)."""
    agent = create_agent(chat, tools=[lookup_order], response_format=Person)
    result = agent.invoke({"messages": [HumanMessage(ASK)]})
    check_person(result["structured_response"])
    tools = [convert_to_openai_tool(lookup_order)]
    turns = [{"role": "user", "content": ASK}]
    expected = engine.chat(turns, tools=tools, response_format=Person, max_new_tokens=MAX_TOKENS)
    assert result["messages"][1].content == expected.text
    assert expected.parsed() == result["structured_response"]


def test_a_forced_call_over_a_long_context_goes_through_parallelcomp(chat):
    documents = [text_of_tokens(1200, seed=index) for index in range(3)]
    bound = chat.bind_tools([lookup_order], tool_choice="lookup_order").bind(context=documents)
    message = bound.invoke(ASK)
    assert message.response_metadata["chunks_total"] >= 3
    [call] = message.tool_calls
    check_order_call(call)
    person = chat.with_structured_output(Person, context=documents).invoke("Describe a person.")
    check_person(person)


def test_profile_declares_tools_and_structured_output(chat):
    profile = chat.profile
    assert profile["tool_calling"] and profile["tool_choice"] and profile["structured_output"]


@pytest.mark.parametrize(
    ("tools", "bound", "message"),
    [
        ([lookup_order], {"tool_choice": "unknown_tool"}, "tool_choice must be"),
        (
            [lookup_order],
            {"response_format": {"type": "grammar", "grammar": 'start: "x"'}},
            "must be a JSON schema",
        ),
        ([lookup_order, lookup_order], {}, "tool names must be distinct"),
        ([], {}, "non-empty list of tools"),
    ],
)
def test_bad_tool_input_is_refused_before_any_model_work(chat, engine, tools, bound, message):
    shapes = forward_shapes(engine.model)
    with pytest.raises(InvalidInputError, match=message):
        chat.bind_tools(tools, **bound).invoke(ASK)
    assert shapes == []


def test_bad_structured_output_arguments_are_refused(chat):
    with pytest.raises(InvalidInputError, match="method must be one of"):
        chat.with_structured_output(Person, method="xml")
    with pytest.raises(InvalidInputError, match="cannot use this schema"):
        chat.with_structured_output({"type": "object", "properties": {}})
    with pytest.raises(InvalidInputError, match="cannot convert"):
        chat.bind_tools([42])
