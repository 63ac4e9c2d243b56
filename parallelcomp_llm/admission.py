"""Admission of requests to the model: each has a deadline, a bounded number wait, and when the
model becomes free the oldest waiting request and the compatible ones behind it form the next batch.

This module decides who runs next; `scheduler` runs them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

from .errors import EngineBusyError, InvalidInputError


class Deadline:
    """The moment a request must be done by (`seconds` from now), or none."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    @classmethod
    def within(cls, timeout_s: float | None, limit_s: float | None) -> Deadline:
        """A caller's `timeout_s` (a positive number of seconds, or None), at most `limit_s`;
        `InvalidInputError` for anything else."""
        if timeout_s is not None and (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not math.isfinite(timeout_s)
            or timeout_s <= 0
        ):
            raise InvalidInputError(
                f"timeout_s must be a positive number of seconds, got {timeout_s!r}"
            )
        limits = [seconds for seconds in (timeout_s, limit_s) if seconds is not None]
        return cls(min(limits) if limits else None)

    def remaining(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


class Waiting(Protocol):
    """What the waiting line needs to know of a request.

    `key`: requests with equal keys (not None) may run in one batch; `size`: the rows the request
    adds to a batch; `wanted()`: False once its caller has gone or its deadline has passed.
    """

    key: Hashable | None

    @property
    def size(self) -> int: ...

    def wanted(self) -> bool: ...


RequestT = TypeVar("RequestT", bound=Waiting)


class WaitingLine(Generic[RequestT]):
    """Requests waiting for the model, oldest first; at most `max_waiting` of them.

    The next batch is the oldest request still wanted and, behind it, every waiting request with
    the same key, as long as the batch has at most `max_batch_rows` rows (the oldest request is
    taken whole, whatever its size). Requests that are no longer wanted are dropped.
    """

    def __init__(self, max_waiting: int, max_batch_rows: int) -> None:
        self.max_waiting = max_waiting
        self.max_batch_rows = max_batch_rows
        self._requests: list[RequestT] = []

    def count(self) -> int:
        """Requests waiting and still wanted."""
        self._drop_unwanted()
        return len(self._requests)

    def add(self, request: RequestT) -> None:
        """Queue `request`; `EngineBusyError` when `max_waiting` requests already wait."""
        waiting = self.count()
        if waiting >= self.max_waiting:
            raise EngineBusyError(
                f"{waiting} requests are already waiting for the model "
                f"(max_waiting_requests={self.max_waiting}); try again later"
            )
        self._requests.append(request)

    def put_back(self, requests: list[RequestT]) -> None:
        """Return `requests` to the front of the line, in their order."""
        self._requests[:0] = requests

    def next_batch(self) -> list[RequestT]:
        """Take the next batch out of the line (empty when nothing waits)."""
        self._drop_unwanted()
        if not self._requests:
            return []
        first, *behind = self._requests
        batch, rows = [first], first.size
        if first.key is not None:
            for request in behind:
                if request.key == first.key and rows + request.size <= self.max_batch_rows:
                    batch.append(request)
                    rows += request.size
        taken = {id(request) for request in batch}
        self._requests = [request for request in self._requests if id(request) not in taken]
        return batch

    def take_all(self) -> list[RequestT]:
        """Empty the line; the requests that waited, in order."""
        taken, self._requests = self._requests, []
        return taken

    def _drop_unwanted(self) -> None:
        self._requests = [request for request in self._requests if request.wanted()]
