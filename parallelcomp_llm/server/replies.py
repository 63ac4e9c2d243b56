"""An `Answer` written in OpenAI's shapes: whole, or as the chunks of a stream (`ChatReply` for
chat completions, `CompletionReply` for plain ones; both have the same methods)."""

from __future__ import annotations

import json
import time
import uuid

from pydantic import BaseModel

from ..answer import Answer
from .schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChoice,
    FunctionCall,
    PromptTokensDetails,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)


def usage(answer: Answer) -> Usage:
    """The answer's token counts (the whole context counts as prompt tokens)."""
    stats = answer.stats
    cached = stats.context_tokens if stats.context_cache_hit else 0
    return Usage(
        prompt_tokens=stats.input_tokens,
        completion_tokens=stats.new_tokens,
        total_tokens=stats.input_tokens + stats.new_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


class ChatReply:
    """The chat completion of one request. A stream's deltas are the text to show (with tools,
    never a call's markup); its calls come after them, once the answer is complete."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def whole(self, answer: Answer) -> ChatCompletion:
        calls = _calls(answer)
        message = AssistantMessage(
            content=answer.text if answer.text or not calls else None, tool_calls=calls or None
        )
        choice = ChatChoice(message=message, finish_reason=_finish_reason(answer))
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=usage(answer),
        )

    def opening(self) -> list[BaseModel]:
        return [self._chunk(ChatDelta(role="assistant", content=""))]

    def delta(self, text: str) -> BaseModel:
        return self._chunk(ChatDelta(content=text))

    def closing(self, answer: Answer) -> list[BaseModel]:
        """The chunks after the last delta: the answer's calls (if any), then the finish
        reason."""
        calls = [
            ToolCallDelta(index=index, **call.model_dump())
            for index, call in enumerate(_calls(answer))
        ]
        chunks = [self._chunk(ChatDelta(tool_calls=calls))] if calls else []
        return [*chunks, self._chunk(ChatDelta(), _finish_reason(answer))]

    def usage(self, answer: Answer) -> BaseModel:
        """The last chunk of a stream that asked for usage: no choice, the counts."""
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[], usage=usage(answer)
        )

    def _chunk(self, delta: ChatDelta, finish_reason: str | None = None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=delta, finish_reason=finish_reason)
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice]
        )


class CompletionReply:
    """The plain completion of one request."""

    def __init__(self, model: str) -> None:
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def whole(self, answer: Answer) -> Completion:
        choice = CompletionChoice(text=answer.text, finish_reason=answer.finish_reason)
        return self._completion([choice], usage(answer))

    def opening(self) -> list[BaseModel]:
        return []

    def delta(self, text: str) -> BaseModel:
        return self._completion([CompletionChoice(text=text)])

    def closing(self, answer: Answer) -> list[BaseModel]:
        return [self._completion([CompletionChoice(text="", finish_reason=answer.finish_reason)])]

    def usage(self, answer: Answer) -> BaseModel:
        return self._completion([], usage(answer))

    def _completion(
        self, choices: list[CompletionChoice], counts: Usage | None = None
    ) -> Completion:
        return Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=counts
        )


Reply = ChatReply | CompletionReply


def _calls(answer: Answer) -> list[ToolCallOut]:
    return [
        ToolCallOut(
            id=call.id, function=FunctionCall(name=call.name, arguments=json.dumps(call.arguments))
        )
        for call in answer.tool_calls
    ]


def _finish_reason(answer: Answer) -> str:
    return "tool_calls" if answer.tool_calls else answer.finish_reason
