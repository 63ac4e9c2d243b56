"""LlamaIndex's function calling over the engine's: LlamaIndex tools as OpenAI function dicts,
chat messages (assistant tool calls and tool results included) as the engine's message dicts, the
engine's `ToolCall`s as LlamaIndex `ToolCallBlock`s and `ToolSelection`s.

An assistant message carries its calls as `ToolCallBlock`s in `blocks`, as LlamaIndex's own LLMs
do; messages from elsewhere may carry them as OpenAI dicts in `additional_kwargs["tool_calls"]`.
A tool result (`role="tool"`) names its call in `additional_kwargs["tool_call_id"]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.tools.types import BaseTool

from parallelcomp_llm import ToolCall


def openai_tools(tools: Sequence[BaseTool]) -> list[dict[str, Any]]:
    """LlamaIndex tools in OpenAI's function format, which the engine takes (no length limit on
    descriptions: that is OpenAI's service's, not the model's)."""
    return [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]


def engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as the engine's OpenAI-style dicts: role and text, an assistant
    message's calls as `tool_calls`, a tool result's `tool_call_id`. The engine checks them."""
    return [engine_message(message) for message in messages]


def engine_message(message: ChatMessage) -> dict[str, Any]:
    """One chat message as the engine's dict (see `engine_messages`)."""
    turn: dict[str, Any] = {"role": message.role.value, "content": message.content or ""}
    blocks = [block for block in message.blocks if isinstance(block, ToolCallBlock)]
    calls = [openai_call(block) for block in blocks] or message.additional_kwargs.get("tool_calls")
    if calls:
        turn["tool_calls"] = calls
    call_id = message.additional_kwargs.get("tool_call_id")
    if message.role == MessageRole.TOOL and call_id is not None:
        turn["tool_call_id"] = call_id
    return turn


def openai_call(block: ToolCallBlock) -> dict[str, Any]:
    """A `ToolCallBlock` as an assistant message's `tool_calls` item in OpenAI's format."""
    function = {"name": block.tool_name, "arguments": block.tool_kwargs}
    return {"id": block.tool_call_id or "", "type": "function", "function": function}


def call_blocks(calls: Sequence[ToolCall]) -> list[ToolCallBlock]:
    """The engine's calls as LlamaIndex `ToolCallBlock`s (arguments as dicts)."""
    return [
        ToolCallBlock(tool_call_id=call.id, tool_name=call.name, tool_kwargs=call.arguments)
        for call in calls
    ]


def tool_selections(response: ChatResponse, error_on_no_tool_call: bool) -> list[ToolSelection]:
    """The calls of a chat response as `ToolSelection`s; `ValueError` when it makes none and
    `error_on_no_tool_call` (LlamaIndex's convention)."""
    selections = [
        ToolSelection(
            tool_id=block.tool_call_id or "",
            tool_name=block.tool_name,
            tool_kwargs=block.tool_kwargs,
        )
        for block in response.message.blocks
        if isinstance(block, ToolCallBlock)
    ]
    if not selections and error_on_no_tool_call:
        raise ValueError("Expected at least one tool call, but got 0 tool calls.")
    return selections


def first_call_only(response: ChatResponse) -> ChatResponse:
    """`response` with its first call alone, for callers that do not allow parallel calls."""
    calls = [block for block in response.message.blocks if isinstance(block, ToolCallBlock)]
    if len(calls) < 2:
        return response
    kept = [b for b in response.message.blocks if not isinstance(b, ToolCallBlock) or b is calls[0]]
    message = response.message.model_copy(update={"blocks": kept})
    return response.model_copy(update={"message": message})
