"""LangChain messages as the engine's chat turns (`{"role", "content"}` dicts)."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import BaseMessage, ChatMessage

_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


def chat_turns(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """One turn per message, with the chat-template role names and the message's text."""
    return [
        {
            "role": message.role
            if isinstance(message, ChatMessage)
            else _ROLES.get(message.type, message.type),
            "content": str(message.text),
        }
        for message in messages
    ]
