"""LangChain messages as the engine's chat turns (OpenAI-style `{"role", "content"}` dicts, an
AI message's tool calls as `tool_calls`, a tool result with its `tool_call_id`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, ToolMessage

from parallelcomp_llm import ToolCall

_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


def chat_turn(message: BaseMessage) -> dict[str, Any]:
    """One turn: the chat-template role name and the message's text, with the calls of an AI
    message (arguments as dicts) and the call id a tool message answers."""
    role = (
        message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type, message.type)
    )
    turn: dict[str, Any] = {"role": role, "content": str(message.text)}
    if isinstance(message, AIMessage) and message.tool_calls:
        turn["tool_calls"] = [
            ToolCall(call["id"] or "", call["name"], call["args"]).openai()
            for call in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        turn["tool_call_id"] = message.tool_call_id
    return turn


def chat_turns(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """One turn per message (`chat_turn`)."""
    return [chat_turn(message) for message in messages]
