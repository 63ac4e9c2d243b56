"""`ParallelCompLLM` as a LlamaIndex `FunctionCallingLLM`: structured output by constrained
decoding (`structured_predict`, `as_structured_llm`, streamed and async), forced tool calls that
are valid calls (`chat_with_tools`, `predict_and_call`, over a long context too), streams that
show no call markup, and a `FunctionAgent` tool round trip.

The tiny model is random: these tests check structure (valid calls, parsed types, what the
engine was asked), never meaning."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from llama_index.core import get_response_synthesizer
from llama_index.core.agent.workflow import AgentInput, FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.callbacks import CallbackManager, EventPayload, LlamaDebugHandler
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.tools import FunctionTool
from llama_index.core.types import PydanticProgramMode
from llama_index.llms.parallelcomp import ParallelCompLLM
from llama_index.llms.parallelcomp.tool_calling import (
    engine_messages,
    first_call_only,
    openai_tools,
)
from pydantic import BaseModel, Field

from parallelcomp_llm import InvalidInputError, ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.testing import (
    TEXT_THEN_CLOCK_CALL,
    TINY_SETTINGS,
    ScriptedAnswer,
    text_of_tokens,
    tiny_engine,
    tiny_model,
    tiny_tokenizer,
)

DOCUMENTS = [text_of_tokens(1200, seed=index) for index in range(3)]
TICKET_PROMPT = PromptTemplate("File a ticket about {topic}.")
ASK_WEATHER = "What is the weather in Paris?"


class Ticket(BaseModel):
    """A support ticket (bounded, so that random output completes within the answer room)."""

    title: str = Field(max_length=10)
    priority: Literal["low", "high"]
    count: int = Field(ge=0, le=9)
    urgent: bool


class WeatherQuery(BaseModel):
    city: str = Field(max_length=8)
    unit: Literal["C", "F"]


class ClockQuery(BaseModel):
    zone: Literal["UTC", "CET"]


@pytest.fixture(scope="module")
def engine():
    """Room for the tools' descriptions (long in byte tokens) in the question, and for calls and
    JSON answers; chunks of about 1,200 tokens."""
    return tiny_engine(window=2048, answer_reserve_tokens=160, question_reserve_tokens=640)


@pytest.fixture
def llm(engine) -> ParallelCompLLM:
    return ParallelCompLLM(engine=engine)


@pytest.fixture
def weather_calls() -> list[WeatherQuery]:
    """The arguments `weather` was called with, in order."""
    return []


@pytest.fixture
def weather(weather_calls) -> FunctionTool:
    def get_weather(city: str, unit: str) -> str:
        weather_calls.append(WeatherQuery(city=city, unit=unit))
        return f"Sunny in {city}, 20 {unit}"

    return FunctionTool.from_defaults(
        get_weather, fn_schema=WeatherQuery, description="The weather of a city."
    )


@pytest.fixture
def clock() -> FunctionTool:
    def get_time(zone: str) -> str:
        return f"12:00 {zone}"

    return FunctionTool.from_defaults(get_time, fn_schema=ClockQuery, description="The time now.")


def user(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, content=text)


def calls_of(response: ChatResponse) -> list[ToolCallBlock]:
    return [block for block in response.message.blocks if isinstance(block, ToolCallBlock)]


def check_weather_selection(selection) -> None:
    assert selection.tool_name == "get_weather" and selection.tool_id.startswith("call_")
    WeatherQuery.model_validate(selection.tool_kwargs)  # bounded city, unit C or F
    assert set(selection.tool_kwargs) == {"city", "unit"}


def test_it_is_a_function_calling_llm(llm):
    assert isinstance(llm, FunctionCallingLLM)
    assert llm.metadata.is_function_calling_model is True


# -- structured output ------------------------------------------------------------------------


def test_structured_predict_decodes_under_the_schema(llm, engine):
    ticket = llm.structured_predict(Ticket, TICKET_PROMPT, topic="printers")
    assert isinstance(ticket, Ticket)
    # The direct path: the rendered chat, asked with the class as response_format.
    asked = [{"role": "user", "content": "File a ticket about printers."}]
    assert ticket == engine.chat(asked, response_format=Ticket).parsed()
    assert asyncio.run(llm.astructured_predict(Ticket, TICKET_PROMPT, topic="printers")) == ticket


def test_streamed_structured_output_ends_with_the_validated_instance(llm):
    expected = llm.structured_predict(Ticket, TICKET_PROMPT, topic="printers")
    outputs = list(llm.stream_structured_predict(Ticket, TICKET_PROMPT, topic="printers"))
    assert len(outputs) > 1
    assert isinstance(outputs[-1], Ticket) and outputs[-1] == expected

    async def collect():
        stream = await llm.astream_structured_predict(Ticket, TICKET_PROMPT, topic="printers")
        return [output async for output in stream]

    assert asyncio.run(collect())[-1] == expected


def test_as_structured_llm_answers_with_the_class(llm):
    structured = llm.as_structured_llm(Ticket)
    response = structured.chat([user("File a ticket about printers.")])
    assert isinstance(response.raw, Ticket)
    assert Ticket.model_validate_json(response.message.content) == response.raw
    assert response.raw == llm.structured_predict(Ticket, TICKET_PROMPT, topic="printers")
    answer = asyncio.run(structured.achat([user("File a ticket about printers.")]))
    assert answer.raw == response.raw


def test_structured_predict_over_a_context_argument_goes_through_parallelcomp(engine):
    debug = LlamaDebugHandler(print_trace_on_end=False)
    llm = ParallelCompLLM(engine=engine, callback_manager=CallbackManager([debug]))
    template = PromptTemplate("Read these.\n{context_str}\nFile a ticket for: {query_str}")
    ticket = llm.structured_predict(Ticket, template, context_str=DOCUMENTS, query_str="a fault")
    assert isinstance(ticket, Ticket)
    [(_, end)] = debug.get_llm_inputs_outputs()
    answer = end.payload[EventPayload.COMPLETION].raw["answer"]
    assert answer.stats.chunks_total >= 3
    assert answer.parsed() == ticket
    args = {"context_str": DOCUMENTS, "query_str": "a fault"}
    assert list(llm.stream_structured_predict(Ticket, template, **args))[-1] == ticket


def test_a_model_without_chat_template_completes_the_rendered_prompt():
    plain = ParallelCompEngine(
        tiny_model(window=2048),
        tiny_tokenizer(chat_template=False),
        ParallelCompConfig(**(TINY_SETTINGS | {"answer_reserve_tokens": 160})),
    )
    llm = ParallelCompLLM(engine=plain)
    ticket = llm.structured_predict(Ticket, TICKET_PROMPT, topic="printers")
    expected = plain.complete("File a ticket about printers.", response_format=Ticket)
    assert ticket == expected.parsed()


def test_a_structured_tree_summarize_answers_over_all_nodes_at_once(llm, llm_answers):
    synthesizer = get_response_synthesizer(
        llm=llm, response_mode="tree_summarize", output_cls=Ticket
    )
    nodes = [NodeWithScore(node=TextNode(text=document)) for document in DOCUMENTS]
    response = synthesizer.synthesize("File a ticket.", nodes)
    assert isinstance(response.response, Ticket)
    [answer] = llm_answers()
    assert answer.stats.chunks_total >= 3 and answer.parsed() == response.response


def test_the_function_program_mode_goes_through_a_forced_tool_call(engine):
    llm = ParallelCompLLM(engine=engine, pydantic_program_mode=PydanticProgramMode.FUNCTION)
    ticket = llm.structured_predict(Ticket, TICKET_PROMPT, topic="printers")
    assert isinstance(ticket, Ticket)


# -- function calling -------------------------------------------------------------------------


def test_a_required_call_is_a_valid_tool_selection(llm, weather, clock):
    response = llm.chat_with_tools([weather, clock], user_msg=ASK_WEATHER, tool_required=True)
    [selection] = llm.get_tool_calls_from_response(response)
    assert selection.tool_name in {"get_weather", "get_time"}
    assert response.message.content == ""
    assert response.raw["answer"].tool_calls[0].id == selection.tool_id

    named = llm.chat_with_tools([weather, clock], user_msg=ASK_WEATHER, tool_choice="get_weather")
    [selection] = llm.get_tool_calls_from_response(named)
    check_weather_selection(selection)

    async_response = asyncio.run(
        llm.achat_with_tools([weather], user_msg=ASK_WEATHER, tool_required=True)
    )
    check_weather_selection(*llm.get_tool_calls_from_response(async_response))


def test_predict_and_call_runs_the_tool(llm, weather, weather_calls):
    output = llm.predict_and_call([weather], user_msg=ASK_WEATHER, tool_required=True)
    [arguments] = weather_calls
    assert output.response == f"Sunny in {arguments.city}, 20 {arguments.unit}"
    assert [source.tool_name for source in output.sources] == ["get_weather"]


def test_a_forced_call_over_a_long_context_goes_through_parallelcomp(llm, weather):
    response = llm.chat_with_tools(
        [weather], user_msg=ASK_WEATHER, tool_required=True, context=DOCUMENTS
    )
    assert response.raw["answer"].stats.chunks_total >= 3
    check_weather_selection(*llm.get_tool_calls_from_response(response))


def test_a_streamed_forced_call_shows_no_markup_and_ends_with_the_call(llm, weather):
    streamed = list(llm.stream_chat_with_tools([weather], user_msg=ASK_WEATHER, tool_required=True))
    assert all(not response.delta for response in streamed)
    assert all(not calls_of(response) for response in streamed[:-1])
    check_weather_selection(*llm.get_tool_calls_from_response(streamed[-1]))

    async def collect():
        stream = await llm.astream_chat_with_tools(
            [weather], user_msg=ASK_WEATHER, tool_required=True
        )
        return [response async for response in stream]

    last = asyncio.run(collect())[-1]
    check_weather_selection(*llm.get_tool_calls_from_response(last))


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_a_streamed_chat_free_to_answer_shows_its_text(llm, engine, weather, choice):
    asked = [{"role": "user", "content": ASK_WEATHER}]
    expected = engine.chat(asked, tools=openai_tools([weather]), tool_choice=choice)
    assert not expected.tool_calls  # the random model answers in text
    streamed = list(llm.stream_chat_with_tools([weather], user_msg=ASK_WEATHER, tool_choice=choice))
    assert "".join(response.delta for response in streamed) == expected.text
    assert streamed[-1].message.content == expected.text


def test_a_streamed_call_after_text_shows_the_text_as_it_comes_and_no_markup(llm, engine):
    def get_time() -> str:
        return "12:00"

    clock = FunctionTool.from_defaults(get_time, description="The time now.")
    with ScriptedAnswer(engine.model, engine.tokenizer, TEXT_THEN_CLOCK_CALL):
        streamed = list(llm.stream_chat_with_tools([clock], user_msg="What time is it?"))

        async def collect():
            stream = await llm.astream_chat_with_tools([clock], user_msg="What time is it?")
            return [response async for response in stream]

        last = asyncio.run(collect())[-1]
    deltas = [response.delta for response in streamed]
    assert "".join(deltas) == "Let me look.\n" and len(deltas) > 2
    assert not any("<" in delta for delta in deltas)
    assert all(not calls_of(response) for response in streamed[:-1])
    assert streamed[0].message.content == "L"  # the text shows before the answer is complete
    assert streamed[-1].message.content == last.message.content == "Let me look."
    [selection] = llm.get_tool_calls_from_response(streamed[-1])
    assert selection.tool_name == "get_time" and selection.tool_kwargs == {}
    assert [s.tool_name for s in llm.get_tool_calls_from_response(last)] == ["get_time"]


def test_first_call_only_keeps_the_text_and_the_first_call():
    first = ToolCallBlock(tool_call_id="a", tool_name="get_time", tool_kwargs={})
    second = ToolCallBlock(tool_call_id="b", tool_name="get_time", tool_kwargs={})
    message = ChatMessage(role="assistant", blocks=[TextBlock(text="Both."), first, second])
    kept = first_call_only(ChatResponse(message=message))
    assert kept.message.blocks == [TextBlock(text="Both."), first]
    assert len(message.blocks) == 3


def test_a_chat_history_with_calls_and_results_reaches_the_engine(llm, engine, weather):
    call = ToolCallBlock(
        tool_call_id="call_1", tool_name="get_weather", tool_kwargs={"city": "Oslo", "unit": "C"}
    )
    openai_call = {
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Rome", "unit": "F"}'},
    }
    history = [
        user(ASK_WEATHER),
        ChatMessage(role="assistant", blocks=[TextBlock(text=""), call]),
        ChatMessage(
            role="tool", content="Rainy, 9 C", additional_kwargs={"tool_call_id": "call_1"}
        ),
        ChatMessage(
            role="assistant", content=None, additional_kwargs={"tool_calls": [openai_call]}
        ),
        ChatMessage(
            role="tool", content="Sunny, 70 F", additional_kwargs={"tool_call_id": "call_2"}
        ),
    ]
    turns = engine_messages(history)
    assert turns[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}},
            }
        ],
    }
    assert turns[2] == {"role": "tool", "content": "Rainy, 9 C", "tool_call_id": "call_1"}
    assert turns[3]["tool_calls"] == [openai_call]
    response = llm.chat_with_tools([weather], chat_history=history, tool_required=True)
    expected = engine.chat(turns, tools=openai_tools([weather]), tool_choice="required")
    assert response.raw["answer"].token_ids == expected.token_ids


@pytest.mark.parametrize(
    "call",
    [
        lambda llm, tool: llm.chat_with_tools([tool], user_msg=ASK_WEATHER, tool_choice="nope"),
        lambda llm, tool: llm.chat_with_tools([], user_msg=ASK_WEATHER, tool_required=True),
        lambda llm, tool: llm.chat([user(ASK_WEATHER)], tool_choice="required"),
        lambda llm, tool: llm.stream_chat_with_tools([tool], user_msg="", tool_required=True),
    ],
    ids=["unknown-tool", "required-without-tools", "choice-without-tools", "empty-question"],
)
def test_bad_tool_input_is_refused_before_any_model_work(llm, weather, call):
    with pytest.raises(InvalidInputError):
        call(llm, weather)


def test_a_response_without_calls_has_no_tool_selections(llm):
    response = llm.chat([user("Hello")], max_tokens=4)
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="at least one tool call"):
        llm.get_tool_calls_from_response(response)


# -- FunctionAgent ----------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "not-streaming"])
def test_a_function_agent_completes_a_tool_round_trip(engine, weather, weather_calls, streaming):
    llm = ParallelCompLLM(engine=engine, max_new_tokens=160)
    agent = FunctionAgent(
        tools=[weather], llm=llm, initial_tool_choice="get_weather", streaming=streaming
    )

    async def run():
        handler = agent.run(user_msg=ASK_WEATHER)
        events = [event async for event in handler.stream_events()]
        return events, await handler

    events, output = asyncio.run(run())
    [result] = [event for event in events if isinstance(event, ToolCallResult)]
    [arguments] = weather_calls
    assert result.tool_name == "get_weather" and result.tool_kwargs == arguments.model_dump()
    assert result.tool_output.content == f"Sunny in {arguments.city}, 20 {arguments.unit}"
    # The agent's second turn shows the model its call and the tool's result.
    first, second = [event.input for event in events if isinstance(event, AgentInput)]
    turns = engine_messages(second)
    [call] = turns[-2]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"] == result.tool_id
    assert turns[-1] == {
        "role": "tool",
        "content": result.tool_output.content,
        "tool_call_id": result.tool_id,
    }
    # It then answers in text: the final response.
    assert output.tool_calls == [result] and not calls_of(ChatResponse(message=output.response))
    assert output.response.role == MessageRole.ASSISTANT
    assert output.response.content == output.raw["answer"].text
