"""Run one engine request as a sequence of events: the text deltas, then the final `Answer`.

The engine is synchronous: its calls block until the model has worked. `answer_events` reads a
request's events in the caller's thread; `aanswer_events` reads them in a relay thread and hands
them to the event loop, so the loop keeps running while the model works.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

from parallelcomp_llm import Answer

from .settings import OpenStream

Event = str | Answer


def answer_events(open_stream: OpenStream) -> Iterator[Event]:
    """The request's text deltas, then its `Answer` (none when the request was cancelled).
    Closing early cancels the request."""
    stream = open_stream()
    try:
        yield from stream
    finally:
        stream.close()
    if stream.answer is not None:
        yield stream.answer


async def aanswer_events(open_stream: OpenStream) -> AsyncIterator[Event]:
    """`answer_events` read in a relay thread; the event loop is never blocked.

    Leaving the iteration early (break, cancellation) cancels the request at once: it leaves the
    engine's queue, or stops at its next step.
    """
    loop = asyncio.get_running_loop()
    stream = await asyncio.to_thread(open_stream)
    queue: asyncio.Queue[tuple[Event | None, BaseException | None]] = asyncio.Queue()

    def put(event: Event | None, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (event, error))
        except RuntimeError:  # the loop has closed: nobody is listening any more
            stream.cancel()

    def work() -> None:
        try:
            for event in answer_events(lambda: stream):
                put(event)
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
        stream.cancel()
