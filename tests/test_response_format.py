"""Constrained decoding (`response_format`): every answer parses and validates against its
schema or grammar, on the plain-prompt path and over a long context, streamed and batched, and
formats that cannot compile are refused before any model work."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, create_model

from parallelcomp_llm import (
    AnswerFormatError,
    DecodeSettings,
    InvalidInputError,
    ResponseFormat,
)
from parallelcomp_llm.grammar import closed_objects
from parallelcomp_llm.testing import ModelPause, forward_shapes, text_of_tokens, tiny_engine

ROOMY = {"answer_reserve_tokens": 320, "question_reserve_tokens": 48}
"""A 1,024-token window with room for long JSON answers."""


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(window=1024, **ROOMY)


class Person(BaseModel):
    name: str = Field(max_length=6)
    age: int = Field(ge=0, le=120)
    member: bool
    role: Literal["buyer", "seller"]


FIELD_TYPES = st.sampled_from(
    [
        (str, Field(max_length=4)),
        (int, Field(ge=-50, le=50)),
        (bool, ...),
        (Literal["a", "bb", "ccc"], ...),
        (list[int], Field(max_length=3)),
        (Person, ...),
    ]
)


@st.composite
def bounded_models(draw) -> type[BaseModel]:
    """A pydantic model of 1 to 4 fields whose JSON has a bounded length."""
    count = draw(st.integers(1, 4))
    fields = {f"field_{index}": draw(FIELD_TYPES) for index in range(count)}
    return create_model(f"Drawn{draw(st.integers(0, 10**6))}", **fields)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(model=bounded_models(), seed=st.integers(0, 2**16), sampled=st.booleans())
def test_every_answer_parses_and_validates_against_a_random_schema(engine, model, seed, sampled):
    answer = engine.chat(
        [{"role": "user", "content": "Fill the form."}],
        max_new_tokens=320,
        response_format=model,
        temperature=1.0 if sampled else 0.0,
        seed=seed,
    )
    assert answer.finish_reason == "stop"
    value = answer.parsed()
    assert isinstance(value, model)
    assert value == model.model_validate_json(answer.text)


def test_an_answer_over_a_long_context_validates_and_streams_the_same_text(engine):
    documents = [text_of_tokens(600, seed=index) for index in range(4)]
    stream = engine.stream(documents, "Who is it?", response_format=Person)
    streamed = "".join(stream)
    answer = stream.answer
    assert answer.stats.chunks_total >= 4
    assert streamed == answer.text
    assert isinstance(answer.parsed(), Person)
    again = engine.generate(documents, "Who is it?", response_format=Person)
    assert again.token_ids == answer.token_ids


def test_rows_of_one_batch_each_follow_their_own_format(engine):
    documents = [text_of_tokens(600, seed=index) for index in range(3)]
    pause = ModelPause(engine.model)
    holder = engine.stream([text_of_tokens(300, seed=9)], "Hold?", max_new_tokens=2)
    pause.wait_until_reached()
    shapes = forward_shapes(engine.model)
    person = engine.stream(documents, "Who?", response_format=Person)
    yes_no = engine.stream(
        documents, "Yes?", response_format={"type": "grammar", "grammar": 'start: "yes" | "no"'}
    )
    free = engine.stream(documents, "Anything?", max_new_tokens=8)
    pause.release()
    holder.wait()
    answers = [person.wait(), yes_no.wait(), free.wait()]
    assert {answer.stats.batch_size for answer in answers} == {3}
    assert max(rows for rows, tokens in shapes if tokens == 1) == 3
    assert isinstance(answers[0].parsed(), Person)
    assert answers[1].text in {"yes", "no"} and answers[1].parsed() == answers[1].text
    assert answers[2].response_format is None


def test_openai_and_schema_dicts_are_formats(engine):
    schema = {
        "type": "object",
        "properties": {"count": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["count"],
    }
    chat = [{"role": "user", "content": "Count."}]
    openai = {"type": "json_schema", "json_schema": {"name": "counter", "schema": schema}}
    for given_format in (schema, openai):
        value = engine.chat(chat, max_new_tokens=64, response_format=given_format).parsed()
        assert set(value) == {"count"} and 0 <= value["count"] <= 9
    assert ResponseFormat.of({"type": "text"}) is None
    assert ResponseFormat.of({"type": "json_object"}).json_schema == {"type": "object"}


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ({"type": "string", "pattern": "(("}, "JSON schema does not compile"),
        ({"type": "grammar", "grammar": "start: missing_rule"}, "Lark grammar does not compile"),
        ({"type": "json_schema"}, '"json_schema": {"schema"'),
        (3, "response_format must be"),
        ({"not": {object()}}, "not JSON data"),
        ({"type": "grammar", "grammar": " "}, "non-empty grammar"),
    ],
)
def test_a_format_that_cannot_compile_is_refused_before_any_model_work(
    engine, response_format, message
):
    shapes = forward_shapes(engine.model)
    with pytest.raises(InvalidInputError, match=message):
        engine.generate(text_of_tokens(2000), "Q?", response_format=response_format)
    with pytest.raises(InvalidInputError, match=message):
        engine.chat([{"role": "user", "content": "Q?"}], response_format=response_format)
    assert shapes == []


def test_a_cut_answer_says_why_it_does_not_parse(engine):
    answer = engine.chat(
        [{"role": "user", "content": "Q?"}], max_new_tokens=3, response_format=Person
    )
    assert answer.finish_reason == "length"
    with pytest.raises(AnswerFormatError, match="before its JSON value was complete"):
        answer.parsed()
    free = engine.chat([{"role": "user", "content": "Q?"}], max_new_tokens=3)
    with pytest.raises(InvalidInputError, match="without a response_format"):
        free.parsed()


def test_a_model_check_beyond_the_schema_is_reported():
    class Even(BaseModel):
        number: int

        def model_post_init(self, context) -> None:
            if self.number % 2:
                raise ValueError("odd")

    response_format = ResponseFormat.of(Even)
    with pytest.raises(AnswerFormatError, match="Even refuses it"):
        response_format.parse('{"number": 3}', "stop")


def test_settings_carry_the_format_through_renames_and_copies():
    base = DecodeSettings(response_format=Person)
    copied = DecodeSettings.of(
        {"max_tokens": 9}, base=base, renames={"max_tokens": "max_new_tokens"}
    )
    assert copied.response_format.model is Person and copied.max_new_tokens == 9


def test_objects_take_only_their_listed_properties_unless_told():
    schema = {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": {"x": {"type": "integer"}}}},
        "$defs": {"Open": {"type": "object", "properties": {}, "additionalProperties": True}},
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["inner"]["additionalProperties"] is False
    assert closed["$defs"]["Open"]["additionalProperties"] is True
    assert json.dumps(schema).count("additionalProperties") == 1
