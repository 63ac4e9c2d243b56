"""Stage spans: every pipeline stage runs inside `torch.profiler.record_function("parallelcomp/<stage>")`
and, when the engine has one, between two calls of its observer.

The observer is a callable `observer(stage, phase)`, `phase` being "start" or "end"; it runs in the
model's worker thread, right before and after the stage's work is queued (on a GPU the work may
still run after "end": time it with CUDA events, as `benchmarks` does). A stage that fails still
ends (a chunk batch that runs out of memory, then runs again with fewer chunks, is two spans).
An observer that raises fails the request. Stages, in order:
`chunk_prefill`, `question_pass`, `chunk_scoring`, `kv_selection` (per chunk batch and question;
`question_pass` once per question instead for a scorer that reads the question alone),
`chunk_eviction`, `merge` or `reread` (per question), `final_pass` (with calibration), then per
token `sampling` (ends once the tokens are on the host) and `decode_step` (the first of which holds
`decode_setup` on a static cache: the KV copied into it, and the CUDA graph captured for a new
shape); a plain prompt (`complete`, `chat`) runs `prompt_prefill` instead of the stages before
`sampling`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch

StageObserver = Callable[[str, Literal["start", "end"]], None]
"""Called with a stage's name when it starts and when it ends."""

STAGES = (
    "chunk_prefill",
    "question_pass",
    "chunk_scoring",
    "kv_selection",
    "chunk_eviction",
    "merge",
    "reread",
    "final_pass",
    "prompt_prefill",
    "sampling",
    "decode_step",
    "decode_setup",
)


class StageTracer:
    """Marks stage spans for the PyTorch profiler and for an optional observer."""

    def __init__(self, observer: StageObserver | None = None) -> None:
        self.observer = observer

    @contextlib.contextmanager
    def span(self, stage: str) -> Iterator[None]:
        """Run the `with` block as stage `stage`."""
        with torch.profiler.record_function(f"parallelcomp/{stage}"):
            if self.observer is not None:
                self.observer(stage, "start")
            try:
                yield
            finally:
                if self.observer is not None:
                    self.observer(stage, "end")
