"""Runs requests on the model: one worker thread owns the model and runs batches of compatible
requests, and every caller reads the events of its own answer from its own queue.

Design. A caller never runs the model itself. `Scheduler.submit` queues a job (one call: one or
more rows answered together, such as the questions of `generate_batch`) and returns a `RowEvents`
iterator per row. The job starts at once when the model is free; otherwise it waits in the
`WaitingLine` (bounded: `EngineBusyError` when full). A worker thread, started when a job finds
the model free and ending when nothing waits, owns the model. Each time the model becomes free it
takes the oldest waiting job and the jobs waiting behind it with the same key (the same encoded
context), up to `max_batch_rows` rows, and runs them as one batch; no batch waits for more requests
to arrive. It puts each event in the queue of the row it belongs to. The queues are unbounded (text
deltas, at most `max_new_tokens` of them), so the worker never waits for a reader: a slow reader
delays nobody, and a reader that stops reading costs only its queue.

The other design, where the caller that gets the model runs the batch for the others, makes every
member go at the pace of that caller's reading, and leaves them without a runner when that caller
stops reading or is cancelled. A worker that belongs to no caller has neither problem.

Each request of a batch keeps its own fate:
- Deadline: a reader that waits past its job's deadline gets `RequestTimeoutError`. The code
  running the batch asks `BatchControl.check` before each decoder layer of the forward passes
  before decoding (chunk prefills, question passes, the final pass) and `BatchControl.keep` for
  each running row after each decoding step: rows past their deadline fail there with
  `RequestTimeoutError` and are no longer computed, while the other rows go on.
- Cancellation: closing a row's `RowEvents` before its result, or dropping it, cancels its job;
  the job leaves the line, or its rows stop at the next step. `close(wait=False)` does not wait
  for that, for callers that must not block (an event loop).
- Release: a request's last event (its result or its error), and a cancellation, return once the
  model no longer works for it: at once when it was waiting, at the next step when other requests
  of its batch go on, when the batch has stopped otherwise. So a caller that got its answer or
  error, or closed its stream, leaves the engine idle unless other requests are there.
- Device memory: a batch of several jobs that runs out of memory before handing out any event
  runs again, one job at a time; one that runs out later fails every job in it.
- Shutdown: `Scheduler.shutdown` cancels every job and waits for the worker to stop; it runs for
  every scheduler when the interpreter exits, so that the worker never dies inside torch (an
  abort) because the program ended with a request in flight.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Generator, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from .admission import Deadline, WaitingLine
from .errors import DeviceMemoryError, RequestTimeoutError

RunBatch = Callable[[list[Any], "BatchControl"], Generator[tuple[int, Any], None, None]]
"""Runs the rows of a batch: yields (row index, event), each row's events ending with its result."""


class BatchAbandoned(Exception):
    """Raised inside a running batch when no caller wants any of its rows any more."""


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_CANCELLED = object()
"""Wakes a reader whose job another thread cancelled."""


class Job:
    """One call: its `rows`, the function that runs them, and a queue of events per row.

    A job with a `key` may run in one batch with waiting jobs of the same key (then every row
    runs with the first job's `run`, so jobs with equal keys must share it); with None it runs
    alone. Each row's events end with an instance of `result_type`. `deadline` covers waiting and
    running.
    """

    def __init__(
        self,
        rows: list[Any],
        run: RunBatch,
        *,
        key: Hashable | None,
        deadline: Deadline,
        result_type: type,
    ) -> None:
        self.rows = rows
        self.run = run
        self.key = key
        self.deadline = deadline
        self.result_type = result_type
        self.queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in rows]
        self.open_rows = len(rows)
        self.started = False
        self.cancelled = False
        self.released = threading.Event()
        """Set while the model does no work for the job: before it starts and once it has left."""
        self.released.set()

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def done(self) -> bool:
        """Every row has its result or an error."""
        return self.open_rows == 0

    def wanted(self) -> bool:
        """Whether the job still needs the model; a job past its deadline fails here."""
        if self.cancelled or self.done:
            return False
        if self.deadline.expired():
            self.fail(self.timeout_error())
            return False
        return True

    def timeout_error(self) -> RequestTimeoutError:
        if self.started:
            return RequestTimeoutError(f"the request took longer than {self.deadline.seconds} s")
        return RequestTimeoutError(f"waited longer than {self.deadline.seconds} s for the model")

    def start(self) -> None:
        self.started = True
        self.released.clear()

    def wait_again_alone(self) -> None:
        """Back to the line, to run in a batch of its own."""
        self.key = None
        self.started = False
        self.released.set()

    def deliver(self, row: int, event: Any) -> bool:
        """Hand `event` to the row's reader unless the job is over; True when handed."""
        if self.cancelled or self.done:
            return False
        self.queues[row].put(event)
        if isinstance(event, self.result_type):
            self.open_rows -= 1
        return True

    def fail(self, error: BaseException) -> None:
        """End every row still open with `error` (nothing when the job is over)."""
        if self.cancelled or self.done:
            return
        self.open_rows = 0
        for row_queue in self.queues:
            row_queue.put(_Failure(error))

    def cancel(self) -> None:
        """The caller has gone: stop working for it, and wake any reader of its rows."""
        if self.done:
            return
        self.cancelled = True
        for row_queue in self.queues:
            row_queue.put(_CANCELLED)


class BatchControl:
    """A running batch as the code running it sees it: its rows, and whether each is still
    wanted. The worker hands events out through it."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.rows = [row for job in jobs for row in job.rows]
        self._slots = [(job, row) for job in jobs for row in range(job.size)]
        self.delivered = False
        """Whether any event reached a reader."""

    def keep(self, row: int) -> bool:
        """Whether to go on computing `row`; False once its caller has gone or its deadline has
        passed (the row then fails with `RequestTimeoutError`)."""
        job = self._slots[row][0]
        if job.wanted():
            return True
        self._leave(job)
        return False

    def check(self) -> None:
        """Raise `BatchAbandoned` when no row of the batch is wanted any more (every row is asked,
        so that rows past their deadline fail now)."""
        kept = [self.keep(row) for row in range(len(self._slots))]
        if not any(kept):
            raise BatchAbandoned

    def deliver(self, row: int, event: Any) -> None:
        job, row_of_job = self._slots[row]
        self.delivered |= job.deliver(row_of_job, event)
        if job.done:
            self._leave(job)

    def _leave(self, job: Job) -> None:
        """`job` needs the model no more: release it now if the batch goes on for others (else the
        batch is about to stop, and the worker releases it then)."""
        if any(other.wanted() for other in self.jobs if other is not job):
            job.released.set()


class RowEvents(Iterator[Any]):
    """One row's events as its caller reads them: progress events, then the row's result.

    Raises the error the row failed with, or `RequestTimeoutError` when the job's deadline passes
    while waiting for an event. Closing it before the result, or dropping it, cancels the job;
    dropping it waits as `close()` does, except in a thread that runs an event loop.
    """

    def __init__(self, scheduler: Scheduler, job: Job, row: int) -> None:
        self._scheduler = scheduler
        self._job = job
        self._events = job.queues[row]
        self._open = True

    def __iter__(self) -> RowEvents:
        return self

    def __next__(self) -> Any:
        if not self._open:
            raise StopIteration
        try:
            item = self._events.get(timeout=self._job.deadline.remaining())
        except queue.Empty:
            error = self._job.timeout_error()
            self.close()
            raise error from None
        if item is _CANCELLED:
            self._open = False
            raise StopIteration
        if isinstance(item, _Failure | self._job.result_type):
            self._open = False
            self._scheduler.await_release(self._job)
        if isinstance(item, _Failure):
            raise item.error
        return item

    @property
    def cancelled(self) -> bool:
        """Whether the job was cancelled before every row had its result."""
        return self._job.cancelled

    def close(self, wait: bool = True) -> None:
        """Cancel the job unless this row has ended; with `wait`, return once the model has let
        it go."""
        if self._open:
            self._open = False
            self._scheduler.cancel(self._job, wait)

    def __del__(self) -> None:
        self.close(wait=not _runs_event_loop())


class Scheduler:
    """Runs jobs on the model in a worker thread, batching waiting jobs with the same key."""

    def __init__(self, max_waiting: int, max_batch_rows: int) -> None:
        self._line: WaitingLine[Job] = WaitingLine(max_waiting, max_batch_rows)
        # Re-entrant: a stream dropped in a reference cycle is closed by the garbage collector,
        # which may run in a thread that holds the lock. Nobody waits while holding it, and the
        # worker releases jobs without it, so such a close cannot deadlock.
        self._lock = threading.RLock()
        self._running: list[Job] = []
        self._worker: threading.Thread | None = None
        _SCHEDULERS.add(self)

    @property
    def busy(self) -> bool:
        """Whether the model works for some job."""
        with self._lock:
            return any(not job.released.is_set() for job in self._running)

    @property
    def waiting(self) -> int:
        """Jobs waiting for the model."""
        with self._lock:
            return self._line.count()

    def submit(self, job: Job) -> list[RowEvents]:
        """Run `job` now if the model is free, else queue it (`EngineBusyError` when the line is
        full); one `RowEvents` per row of the job."""
        with self._lock:
            if self._running:
                self._line.add(job)
            else:
                job.start()
                self._running = [job]
                self._worker = threading.Thread(
                    target=self._work, args=([job],), name="parallelcomp-model", daemon=True
                )
                self._worker.start()
        return [RowEvents(self, job, row) for row in range(job.size)]

    def cancel(self, job: Job, wait: bool = True) -> None:
        """Cancel `job`; with `wait`, return once the model does no more work for it."""
        with self._lock:  # so that the worker does not start it after this
            job.cancel()
        if wait:
            self.await_release(job)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Cancel every waiting and running job, then wait (up to `timeout_s`) for the worker to
        stop: at the running batch's next step."""
        with self._lock:
            for job in [*self._line.take_all(), *self._running]:
                job.cancel()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout_s)

    def await_release(self, job: Job) -> None:
        """Wait until the model does no more work for `job` (not from the worker itself, nor while
        the interpreter shuts down, when the worker may be gone)."""
        if threading.current_thread() is not self._worker and not sys.is_finalizing():
            job.released.wait()

    def _work(self, batch: list[Job]) -> None:
        while batch:
            again = self._run(batch)
            for job in batch:
                if job in again:
                    job.wait_again_alone()
                else:
                    job.released.set()
            with self._lock:
                self._line.put_back(again)
                batch = self._line.next_batch()
                for job in batch:
                    job.start()
                self._running = batch
                if not batch:
                    self._worker = None

    def _run(self, batch: list[Job]) -> list[Job]:
        """Run one batch to its end; return its jobs when they are to run again one by one."""
        control = BatchControl(batch)
        error: BaseException = RuntimeError("the batch ended without a result for this request")
        try:
            with contextlib.closing(batch[0].run(control.rows, control)) as events:
                for row, event in events:
                    control.deliver(row, event)
        except BaseException as raised:  # noqa: BLE001 - handed to the callers of the batch
            error = raised
        if isinstance(error, DeviceMemoryError) and len(batch) > 1 and not control.delivered:
            return batch
        for job in batch:
            job.fail(error)
        return []


_SCHEDULERS: weakref.WeakSet[Scheduler] = weakref.WeakSet()
_EXIT_TIMEOUT_S = 60.0
"""Longest the interpreter's exit waits for a worker to finish its current step."""


@atexit.register
def _shut_down_all() -> None:
    for scheduler in list(_SCHEDULERS):
        scheduler.shutdown(timeout_s=_EXIT_TIMEOUT_S)


def _runs_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop (which must never wait for the model)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
