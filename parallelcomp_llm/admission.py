"""Admission of requests to the model: one runs at a time, a bounded number wait, each has a deadline."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from .errors import EngineBusyError, RequestTimeoutError


class Deadline:
    """The moment a request must be done by (`seconds` from now), or none."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def check(self) -> None:
        """Raise `RequestTimeoutError` once the deadline has passed."""
        if self.end is not None and time.monotonic() > self.end:
            raise RequestTimeoutError(f"the request took longer than {self.seconds} s")


class ModelGate:
    """Lets one request use the model at a time while at most `max_waiting` others wait."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._model = threading.Lock()
        self._counter = threading.Lock()
        self._waiting = 0

    @property
    def busy(self) -> bool:
        return self._model.locked()

    @contextlib.contextmanager
    def hold(self, deadline: Deadline) -> Iterator[None]:
        """Wait for the model (refused when too many wait, or past the deadline), then hold it."""
        with self._counter:
            if self._model.locked() and self._waiting >= self.max_waiting:
                raise EngineBusyError(
                    f"{self._waiting} requests are already waiting for the model "
                    f"(max_waiting_requests={self.max_waiting}); try again later"
                )
            self._waiting += 1
        try:
            timeout = deadline.remaining()
            acquired = self._model.acquire(timeout=-1 if timeout is None else timeout)
        finally:
            with self._counter:
                self._waiting -= 1
        if not acquired:
            raise RequestTimeoutError(f"waited longer than {deadline.seconds} s for the model")
        try:
            yield
        finally:
            self._model.release()
