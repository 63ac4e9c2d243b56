"""`with_structured_output` of `ChatParallelComp`: the chat model bound to answer in a schema,
followed by the LangChain output parser that reads the schema's value from its message.

Every method decodes under a grammar (the engine's constrained decoding), so the answer is JSON of
the requested shape unless it is cut by `max_tokens`:

- `json_schema`: the answer is the schema's JSON value (`response_format=` the JSON schema);
- `function_calling`: the answer is a forced call of one tool whose arguments are the value;
- `json_mode`: the answer is some JSON object (`{"type": "json_object"}`); the prompt must say
  which keys, as OpenAI's JSON mode asks.

An answer that reached `max_tokens` is refused before the parser, which would otherwise read a
cut JSON value leniently (a partial dict) or find no call in a cut one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, get_args

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import (
    BaseOutputParser,
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.runnables import (
    Runnable,
    RunnableGenerator,
    RunnableMap,
    RunnablePassthrough,
)
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass

from parallelcomp_llm import InvalidInputError

from .tool_calls import openai_tools

if TYPE_CHECKING:
    from .chat_models import ChatParallelComp

StructuredOutputMethod = Literal["json_schema", "function_calling", "json_mode"]
"""How `with_structured_output` makes the model answer in the schema (see the module)."""

JSON_OBJECT = {"type": "json_object"}
"""OpenAI's `response_format` of JSON mode, which the engine takes as any JSON object."""


def json_schema_of(schema: dict[str, Any] | type) -> dict[str, Any]:
    """The JSON schema of `schema` (a pydantic or TypedDict class, a JSON schema with a `title`,
    an OpenAI function or tool dict), as LangChain converts it; `InvalidInputError` for what it
    cannot convert."""
    try:
        return convert_to_json_schema(schema)
    except ValueError as error:
        raise InvalidInputError(f"with_structured_output cannot use this schema: {error}") from None


def structured_model(
    chat: ChatParallelComp,
    schema: dict[str, Any] | type,
    method: StructuredOutputMethod,
    strict: bool | None,
    kwargs: dict[str, Any],
) -> tuple[Runnable[LanguageModelInput, Any], BaseOutputParser]:
    """`chat` bound to answer in `schema` by `method` (with the call keywords `kwargs`), and the
    parser of its messages: a pydantic class's instance, else the JSON value as a dict."""
    if method not in get_args(StructuredOutputMethod):
        raise InvalidInputError(
            f"method must be one of {list(get_args(StructuredOutputMethod))}, got {method!r}"
        )
    pydantic_schema = is_basemodel_subclass(schema)
    traced = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
    if method == "function_calling":
        [tool] = openai_tools([schema])
        name = tool["function"]["name"]
        model = chat.bind_tools(
            [tool], tool_choice=name, ls_structured_output_format=traced, **kwargs
        )
        if pydantic_schema:
            return model, PydanticToolsParser(tools=[schema], first_tool_only=True)
        return model, JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
    response_format = JSON_OBJECT if method == "json_mode" else json_schema_of(schema)
    model = chat.bind(response_format=response_format, ls_structured_output_format=traced, **kwargs)
    if pydantic_schema:
        return model, PydanticOutputParser(pydantic_object=schema)
    return model, JsonOutputParser()


def complete(message: BaseMessage) -> BaseMessage:
    """`message`, unless its answer reached `max_tokens` (`OutputParserException`): then its
    value, or its call's arguments, are cut. Only a stream's last chunk says why it ended."""
    if message.response_metadata.get("finish_reason") == "length":
        raise OutputParserException(
            "the answer reached max_tokens before its value was complete; raise max_tokens, or "
            "bound the schema's strings and arrays (maxLength, maxItems)",
            llm_output=message.text,
        )
    return message


def _complete_messages(messages: Iterator[BaseMessage]) -> Iterator[BaseMessage]:
    for message in messages:
        yield complete(message)


async def _acomplete_messages(messages: AsyncIterator[BaseMessage]) -> AsyncIterator[BaseMessage]:
    async for message in messages:
        yield complete(message)


COMPLETE_ANSWERS = RunnableGenerator(_complete_messages, _acomplete_messages, name="complete")
"""Passes a model's messages (or stream of chunks) on as they come, through `complete`."""


def parsed_output(
    model: Runnable[LanguageModelInput, Any], parser: BaseOutputParser, include_raw: bool
) -> Runnable[LanguageModelInput, Any]:
    """`model` followed by `parser` (after `COMPLETE_ANSWERS`); with `include_raw`, a dict of the
    message (`raw`), its value (`parsed`, None when it failed) and the error (`parsing_error`,
    None when it parsed), as LangChain's own chat models answer."""
    checked_parser = COMPLETE_ANSWERS | parser
    if not include_raw:
        return model | checked_parser
    parse = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | checked_parser, parsing_error=lambda _: None
    )
    unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=model) | parse.with_fallbacks([unparsed], exception_key="parsing_error")
