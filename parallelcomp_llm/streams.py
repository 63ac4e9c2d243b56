"""`AnswerStream`: a request's text deltas as they are decoded, for sync and async callers.

Each stream reads its own queue of events, so streams read at different paces do not hold one
another up. Async iteration relays the events from a thread to the event loop, which never waits
on the model; a consumer that leaves (breaks out, is cancelled, drops the iterator) cancels the
request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from .answer import Answer
from .errors import RequestCancelledError
from .shown_text import ShownText

if TYPE_CHECKING:
    from .scheduler import RowEvents
    from .tools import ToolSet


class AnswerStream(Iterator[str]):
    """Iterator (and async iterator) of text deltas; `answer` holds the full `Answer` once the
    stream is exhausted, with the calls of a chat with `tools` read from it. In a chat with
    `tools` the deltas are the text to show, never a call's markup (`ShownText`): text held back
    as a possible call that was none comes as the last delta, and `answer.text` is the text
    beside the calls (trimmed). `close()`, or dropping the stream, cancels the request."""

    def __init__(self, events: RowEvents, tools: ToolSet | None = None) -> None:
        self._events = events
        self._tools = tools
        self._shown = None if tools is None else ShownText(tools)
        self._relay: AsyncIterator[str] | None = None
        self.answer: Answer | None = None

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> str:
        for event in self._events:
            delta = self._delta(event)
            if delta is not None:
                return delta
        raise StopIteration

    def _delta(self, event: str | Answer) -> str | None:
        """The delta an event brings, None for none: a text delta as generated, or in a chat with
        tools what of it shows; once the answer is in, the text still to show."""
        if isinstance(event, Answer):
            self.answer = event if self._tools is None else self._tools.answered(event)
            return None if self._shown is None else self._shown.rest(self.answer.text) or None
        return event if self._shown is None else self._shown.add(event) or None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._relay is None:
            self._relay = self._relayed()
        return self._relay

    def wait(self) -> Answer:
        """Read the stream to its end; its `Answer`. `RequestCancelledError` when the request
        was cancelled before it."""
        for _ in self:
            pass
        return self._final()

    async def wait_async(self) -> Answer:
        """`wait` for async callers (the event loop never waits on the model); cancelling the
        awaiting task cancels the request."""
        async for _ in self:
            pass
        return self._final()

    def _final(self) -> Answer:
        if self.answer is None:
            raise RequestCancelledError("the request was cancelled before its answer")
        return self.answer

    @property
    def cancelled(self) -> bool:
        """Whether the request was cancelled before its answer (by `close`, `cancel` or an async
        consumer that left)."""
        return self._events.cancelled

    def close(self) -> None:
        """Stop generating; return once the model no longer works for this request."""
        self._events.close()

    def cancel(self) -> None:
        """Stop generating without waiting for the model to let the request go (at its next step
        at the latest): for code that must not block, such as an event loop."""
        self._events.close(wait=False)

    async def _relayed(self) -> AsyncIterator[str]:
        """The deltas read in a relay thread and handed to the running event loop."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str | None, BaseException | None]] = asyncio.Queue()

        def put(delta: str | None, error: BaseException | None = None) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (delta, error))
            except RuntimeError:  # the loop has closed: nobody is listening any more
                self.cancel()

        def relay() -> None:
            try:
                for delta in self:
                    put(delta)
            except BaseException as error:  # noqa: BLE001 - re-raised in the event loop
                put(None, error)
                return
            put(None)

        threading.Thread(target=relay, name="parallelcomp-stream", daemon=True).start()
        try:
            while True:
                delta, error = await events.get()
                if error is not None:
                    raise error
                if delta is None:
                    return
                yield delta
        finally:
            self.cancel()
