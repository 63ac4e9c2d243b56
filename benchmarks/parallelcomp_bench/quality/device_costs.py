"""Timing on a method's device, and freeing that device after an item that ran out of memory."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import torch

from parallelcomp_llm import DeviceMemoryError
from parallelcomp_llm.device import device_work_done, release_cached_memory

MEMORY_ERRORS = (torch.OutOfMemoryError, DeviceMemoryError)


def seconds_since(started: float, device: torch.device) -> float:
    """Seconds from `started` (a `time.perf_counter` reading) until the device's queued work is
    done."""
    return device_work_done(device) - started


@contextlib.contextmanager
def freeing_memory_on_failure(device: torch.device) -> Iterator[None]:
    """Re-raise running out of memory only after freeing what the failed item allocated.

    The error's traceback keeps every frame it passed through alive, with the caches and
    activations in their locals; those locals are dropped (for the error and the errors it was
    raised from) and the allocator's cached blocks go back to the device.
    """
    try:
        yield
    except MEMORY_ERRORS as error:
        failure: BaseException | None = error
        while failure is not None:
            traceback.clear_frames(failure.__traceback__)
            failure = failure.__context__
        release_cached_memory(device)
        raise
