"""Tool calling between LangChain and the engine: LangChain's tools and `tool_choice` values as the
engine takes them, and the calls of an `Answer` as LangChain's tool calls and tool call chunks."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages.tool import ToolCall, ToolCallChunk, tool_call, tool_call_chunk
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from parallelcomp_llm import Answer, InvalidInputError

LangChainTool = dict[str, Any] | type | Callable[..., Any] | BaseTool
"""What `bind_tools` takes: an OpenAI tool dict, a pydantic or TypedDict class, a function, or a
`BaseTool` (anything `convert_to_openai_tool` converts)."""

TOOL_KEYWORDS = ("tools", "tool_choice")
"""The call keywords that go to the engine's `stream_chat` as they are, beside the decoding
settings."""


def openai_tools(tools: Sequence[LangChainTool]) -> list[dict[str, Any]]:
    """`tools` in OpenAI's function format, the engine's tool format; `InvalidInputError` for one
    that LangChain cannot convert."""
    try:
        return [convert_to_openai_tool(tool) for tool in tools]
    except ValueError as error:
        raise InvalidInputError(f"a tool LangChain cannot convert: {error}") from None


def engine_tool_choice(tool_choice: Any) -> Any:
    """LangChain's `tool_choice` as the engine's: True forces a call of any tool ("required"),
    False and None leave the model to decide; "auto", "none", "any", "required", a tool's name
    and OpenAI's `{"type": "function", "function": {"name": ...}}` are the engine's own values
    (it checks them)."""
    if isinstance(tool_choice, bool):
        return "required" if tool_choice else None
    return tool_choice


def message_tool_calls(answer: Answer) -> list[ToolCall]:
    """The calls the answer makes, as an `AIMessage`'s `tool_calls`."""
    return [
        tool_call(name=call.name, args=call.arguments, id=call.id) for call in answer.tool_calls
    ]


def tool_call_chunks(answer: Answer) -> list[ToolCallChunk]:
    """The calls the answer makes as tool call chunks, arguments as JSON text and position as
    `index`; in a stream's last chunk, they make the calls of `message_tool_calls`."""
    return [
        tool_call_chunk(
            name=call.name,
            args=json.dumps(call.arguments, ensure_ascii=False),
            id=call.id,
            index=index,
        )
        for index, call in enumerate(answer.tool_calls)
    ]
