"""Run one engine request as a sequence of events: the text deltas, then the final `Answer`.

The engine is synchronous. `answer_events` runs it in the caller's thread; `aanswer_events` runs it
in a worker thread and hands the events to the event loop, so the loop keeps running while the
model works.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

from parallelcomp_llm import Answer

from .settings import OpenStream

Event = str | Answer


def answer_events(open_stream: OpenStream) -> Iterator[Event]:
    """The request's text deltas, then its `Answer`. Closing early stops the generation."""
    stream = open_stream()
    try:
        yield from stream
    finally:
        stream.close()
    assert stream.answer is not None
    yield stream.answer


async def aanswer_events(open_stream: OpenStream) -> AsyncIterator[Event]:
    """`answer_events` with the model work in a worker thread; the event loop is never blocked.

    Leaving the iteration early (break, cancellation) makes the worker stop after its current token.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Event | None, BaseException | None]] = asyncio.Queue()
    abandoned = threading.Event()

    def put(event: Event | None, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (event, error))
        except RuntimeError:  # the loop has closed: nobody is listening any more
            abandoned.set()

    def work() -> None:
        try:
            events = answer_events(open_stream)
            try:
                for event in events:
                    if abandoned.is_set():
                        break
                    put(event)
            finally:
                events.close()
        except BaseException as error:  # noqa: BLE001 - re-raised on the awaiting side
            put(None, error)
        put(None)

    threading.Thread(target=work, name="parallelcomp-request", daemon=True).start()
    try:
        while True:
            event, error = await queue.get()
            if error is not None:
                raise error
            if event is None:
                return
            yield event
    finally:
        abandoned.set()
