"""Run one engine request as a sequence of events: the text deltas, then the final `Answer`.

`answer_events` reads a request's events in the caller's thread; `aanswer_events` reads them
through the engine stream's async iteration, so the event loop keeps running while the model
works. Leaving either early cancels the request. Errors of the engine's checks raise when the
request is opened, as LangChain's where it has one (`errors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from parallelcomp_llm import Answer

from .errors import langchain_errors
from .settings import OpenStream

Event = str | Answer


def answer_events(open_stream: OpenStream) -> Iterator[Event]:
    """The request's text deltas, then its `Answer` (none when the request was cancelled)."""
    with langchain_errors():
        stream = open_stream()
    try:
        yield from stream
    finally:
        stream.close()
    if stream.answer is not None:
        yield stream.answer


async def aanswer_events(open_stream: OpenStream) -> AsyncIterator[Event]:
    """`answer_events` for async callers: the request is opened (its input checked and
    tokenized) in a worker thread, and its deltas are read with `async for`."""
    with langchain_errors():
        stream = await asyncio.to_thread(open_stream)
    try:
        async for delta in stream:
            yield delta
    finally:
        stream.cancel()
    if stream.answer is not None:
        yield stream.answer
