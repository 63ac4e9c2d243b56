"""`StageTimer`: the engine's stage observer, timing every stage with CUDA events and every token
on the host, and counting the rows of each chunk-prefill pass (a forward pre-hook on the model)."""

from __future__ import annotations

import time

import torch

from .measure import Events


class StageTimer:
    """Pass it as the engine's `observer`; `start()` before a measured request, read after."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.stage: str | None = None
        self.start()
        model.register_forward_pre_hook(self.count_rows, with_kwargs=True)

    def start(self) -> None:
        """Forget the previous request; mark the start of the next one."""
        self.events = Events(self.device)
        self.batches: list[int] = []
        self.token_times: list[float] = []
        self.events.mark("request:start")

    def __call__(self, stage: str, phase: str) -> None:
        self.stage = stage if phase == "start" else None
        self.events.mark(f"{stage}:{phase}")
        if stage == "sampling" and phase == "end":
            self.token_times.append(time.perf_counter())
            if len(self.token_times) == 1:
                self.events.mark("first_token")

    def count_rows(self, module, args, kwargs) -> None:
        """Forward pre-hook: the rows of each chunk-prefill pass."""
        if self.stage == "chunk_prefill":
            self.batches.append(int(kwargs["input_ids"].shape[0]))

    def stage_seconds(self) -> dict[str, float]:
        """Device seconds per stage before the first token, the time from the request's start to
        the first token, and what no stage span covers in it (`other_s`)."""
        before = self.events.marks[: [name for name, _ in self.events.marks].index("first_token")]
        spans = Events(self.device)
        spans.marks = before
        seconds = {f"{stage}_s": value for stage, value in spans.spans().items()}
        total = self.events.between("request:start", "first_token")
        seconds["other_s"] = total - sum(seconds.values())
        seconds["request_start_to_first_token_s"] = total
        return seconds
