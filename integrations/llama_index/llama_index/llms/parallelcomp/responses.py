"""Engine answers and answer streams as LlamaIndex completion and chat responses.

A streamed response carries the text so far and its delta; the stream ends with one response
whose `raw` is set and whose delta is empty. `raw` is a dict: `usage` (`prompt_tokens`,
`completion_tokens`, `total_tokens`: what LlamaIndex's `TokenCountingHandler` reads, the engine's
counts) and `answer`, the engine's `Answer` (statistics, kept chunks). A chat answer's tool calls
are `ToolCallBlock`s of its message, after its text; a streamed chat with tools shows only text
(the engine stream's deltas are never call markup), and its final response has the calls and
the answer's text beside them. Async callers read the engine stream's async iteration, so the
event loop never waits on the model, and leaving early cancels the request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
    TextBlock,
)

from parallelcomp_llm import Answer, AnswerStream

from .tool_calling import call_blocks

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
    """An assistant chat response; `answer` is the engine's result, set on the final response,
    whose tool calls follow the text as `ToolCallBlock`s."""
    calls = call_blocks(answer.tool_calls) if answer is not None else []
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, blocks=[TextBlock(text=text), *calls]),
        delta=delta,
        raw=raw(answer),
    )


def stream_responses(stream: AnswerStream, build: Build[ResponseT]) -> Iterator[ResponseT]:
    """The responses of an engine stream, built with `build` (`completion` or `chat`), one for
    each text delta, then the final one."""
    text = ""
    try:
        for delta in stream:
            if delta:
                text += delta
                yield build(text, delta, None)
        yield final(stream, build, text)
    finally:
        stream.close()


async def astream_responses(
    stream: AnswerStream, build: Build[ResponseT]
) -> AsyncIterator[ResponseT]:
    """`stream_responses` for async callers."""
    text = ""
    try:
        async for delta in stream:
            if delta:
                text += delta
                yield build(text, delta, None)
        yield final(stream, build, text)
    finally:
        stream.cancel()


def final(stream: AnswerStream, build: Build[ResponseT], streamed: str) -> ResponseT:
    """The last response of a stream read to its end: the `streamed` text, or where the answer
    makes calls its text beside them, an empty delta, and the engine's answer."""
    answer = stream.answer
    text = answer.text if answer is not None and answer.tool_calls else streamed
    return build(text, "", answer)
