"""Measuring on the GPU for the speed benchmarks: CUDA-event spans, the device's matmul and copy
ceilings, freeing memory between runs, and where result files go."""

from __future__ import annotations

import datetime
import gc
import re
import statistics
import time
from pathlib import Path

import torch

from parallelcomp_llm.device import device_work_done, release_cached_memory

GIB = 1 << 30


def result_path(out: str | Path, name: str) -> Path:
    """`out/NAME_<UTC time stamp>.json`, creating `out`."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}_{stamp}.json"


def free_memory(device: torch.device) -> None:
    """Collect garbage and hand the allocator's cached blocks back (the engine's automatic batch
    size reads the free memory)."""
    gc.collect()
    device_work_done(device)
    release_cached_memory(device)


def peak_bytes(device: torch.device) -> int | None:
    """Peak CUDA memory allocated since the last reset (None on the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def _elapsed(begin: object, end: object) -> float:
    """Seconds between two marks: CUDA events, or `perf_counter` readings."""
    if isinstance(begin, torch.cuda.Event):
        return begin.elapsed_time(end) / 1e3
    return end - begin  # type: ignore[operator]


class Events:
    """Marks by name: CUDA events on a GPU (host `perf_counter` on the CPU), measured in stream
    order."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def spans(self) -> dict[str, float]:
        """Seconds between each '<stage>:start' and its '<stage>:end', summed per stage."""
        totals: dict[str, float] = {}
        open_marks: dict[str, object] = {}
        for name, mark in self.marks:
            stage, _, edge = name.rpartition(":")
            if edge == "start":
                open_marks[stage] = mark
            elif edge == "end" and stage in open_marks:
                seconds = _elapsed(open_marks.pop(stage), mark)
                totals[stage] = totals.get(stage, 0.0) + seconds
        return totals

    def between(self, first: str, last: str) -> float:
        marks = dict(self.marks)
        return _elapsed(marks[first], marks[last])


def _median_cuda_seconds(work, repeats: int = 25, warmup: int = 5) -> float:
    times = []
    for index in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        torch.cuda.synchronize()
        if index >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _median_cuda_seconds(lambda: a @ b) / 1e12


def _copy_gbps(device: torch.device, dtype: torch.dtype, elements: int) -> float:
    source = torch.randn(elements, device=device, dtype=dtype)
    target = torch.empty_like(source)
    seconds = _median_cuda_seconds(lambda: target.copy_(source))
    return 2 * source.numel() * source.element_size() / seconds / 1e9


def measure_ceilings(device: torch.device, dtype: torch.dtype) -> dict:
    """The device's bf16 matmul rate (8192^3) and device-to-device copy bandwidth (bytes read and
    written, 2 GiB of bf16), measured now; None on the CPU."""
    if device.type != "cuda":
        return {"matmul_tflops": None, "copy_gbps": None}
    n = 8192
    ceilings = {
        "matmul_tflops": _matmul_tflops(device, dtype, n),
        "matmul_shape": [n, n, n],
        "copy_gbps": _copy_gbps(device, dtype, GIB),
        "copy_bytes_counted": "read + written, 2 GiB buffer",
    }
    free_memory(device)
    return ceilings


def oom_record(error: BaseException) -> dict:
    """A run that ran out of memory, with the allocation that failed."""
    message = str(error).splitlines()[0][:500]
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]i?B)", str(error))
    return {
        "status": "oom",
        "error": message,
        "tried_to_allocate": asked.group(1) if asked else None,
    }
