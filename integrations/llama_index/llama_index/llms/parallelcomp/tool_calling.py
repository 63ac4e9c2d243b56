"""LlamaIndex's function calling over the engine's: LlamaIndex tools as OpenAI function dicts,
chat messages (assistant tool calls and tool results included) as the engine's message dicts, the
engine's `ToolCall`s as LlamaIndex `ToolCallBlock`s and `ToolSelection`s, and the part of a
streamed answer that is text to show rather than a call.

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

from parallelcomp_llm import Answer, ToolCall, ToolSet

CALL_TAG = "<tool_call>"
"""Where a call starts in an answer that chose to make one (the Hermes wire format that
`parallelcomp_llm.tools` reads)."""


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


class ShownText:
    """The text of a streamed chat answer to show as it is generated, never a call's markup: all
    of it without tools (or with `tool_choice="none"`), none of it for a forced call (the whole
    answer is the call's JSON), and otherwise the text before the first `<tool_call>` tag, its
    tail held back while it may be the start of one. The final response has the calls."""

    def __init__(self, tools: ToolSet | None = None) -> None:
        self._tools = tools
        self.generated = ""
        """The text generated so far, markup included."""
        self.shown = ""
        """The text shown so far."""

    def add(self, delta: str) -> str:
        """Take the next generated `delta`; the text it lets show now ('' while held back)."""
        self.generated += delta
        visible = self._visible()
        added, self.shown = visible[len(self.shown) :], visible
        return added

    def final_text(self, answer: Answer | None) -> str:
        """The final response's text: the answer's text beside its calls where tools were
        offered, else what was generated."""
        return self.generated if self._tools is None or answer is None else answer.text

    def rest(self, final_text: str) -> str:
        """The final response's delta: the rest of `final_text` where it goes on from the shown
        text (text held back that was no call after all), else ''."""
        return final_text[len(self.shown) :] if final_text.startswith(self.shown) else ""

    def _visible(self) -> str:
        text = self.generated
        if self._tools is None or self._tools.choice == "none":
            return text
        if self._tools.forced:
            return ""
        start = text.find(CALL_TAG)
        if start >= 0:
            return text[:start]
        held = next((n for n in range(len(CALL_TAG) - 1, 0, -1) if text.endswith(CALL_TAG[:n])), 0)
        return text[: len(text) - held]
