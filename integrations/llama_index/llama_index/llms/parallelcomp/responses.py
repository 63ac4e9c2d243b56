"""Engine answers and answer streams as LlamaIndex completion and chat responses.

A streamed response carries the text so far and its delta; the stream ends with one response
whose delta is empty and whose `raw` is set. `raw` is a dict: `usage` (`prompt_tokens`,
`completion_tokens`, `total_tokens`: what LlamaIndex's `TokenCountingHandler` reads, the engine's
counts) and `answer`, the engine's `Answer` (statistics, kept chunks). Async callers read the
engine stream's async iteration, so the event loop never waits on the model, and leaving early
cancels the request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
)

from parallelcomp_llm import Answer, AnswerStream

ResponseT = TypeVar("ResponseT", CompletionResponse, ChatResponse)
Build = Callable[[str, str | None, Answer | None], ResponseT]


def raw(answer: Answer | None) -> dict[str, Any] | None:
    """The `raw` of a response: None before the final response, else the engine's token counts
    as `usage` (the tokens the answer was decoded over, and the answer's) and the `answer`."""
    if answer is None:
        return None
    prompt, completion = answer.stats.prompt_tokens, answer.stats.new_tokens
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return {"usage": usage, "answer": answer}


def completion(
    text: str, delta: str | None = None, answer: Answer | None = None
) -> CompletionResponse:
    """A completion response; `answer` is the engine's result, set on the final response."""
    return CompletionResponse(text=text, delta=delta, raw=raw(answer))


def chat(text: str, delta: str | None = None, answer: Answer | None = None) -> ChatResponse:
    """An assistant chat response; `answer` is the engine's result, set on the final response."""
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
        delta=delta,
        raw=raw(answer),
    )


def stream_responses(stream: AnswerStream, build: Build[ResponseT]) -> Iterator[ResponseT]:
    """The responses of an engine stream, built with `build` (`completion` or `chat`)."""
    text = ""
    try:
        for delta in stream:
            text += delta
            yield build(text, delta, None)
        yield build(text, "", stream.answer)
    finally:
        stream.close()


async def astream_responses(
    stream: AnswerStream, build: Build[ResponseT]
) -> AsyncIterator[ResponseT]:
    """`stream_responses` for async callers."""
    text = ""
    try:
        async for delta in stream:
            text += delta
            yield build(text, delta, None)
        yield build(text, "", stream.answer)
    finally:
        stream.cancel()
