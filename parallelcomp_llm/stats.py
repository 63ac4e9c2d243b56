"""`StatsRecorder`: fills one request's `AnswerStats` as the pipeline reports its stages."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .answer import AnswerStats, ChunkInfo
from .chunking import Chunk
from .device import peak_memory


class StatsRecorder:
    """The statistics of one request of a batch whose work, on the model's `devices`, started at
    `started` (`device.start_measuring`)."""

    def __init__(self, devices: Sequence[torch.device], started: float, **counts: int) -> None:
        self.devices = devices
        self.started = started
        self.decoding_from = started
        self.stats = AnswerStats(**counts)

    def prefilled(self, cache_hit: bool, chunks: int) -> None:
        """The context's chunks came from a kept encoding, or `chunks` of them were prefilled
        for this request."""
        self.stats.context_cache_hit = cache_hit
        self.stats.chunks_prefilled = chunks

    def selected(
        self,
        chunks: list[Chunk],
        kept: list[int],
        relevance: list[float],
        scorer: str | None,
    ) -> None:
        """Chunk eviction kept the chunks `kept`; `relevance` are the chunks' shares from the
        scorer named `scorer` (None, and a share of 1, for a context of one chunk)."""
        self.stats.scorer = scorer
        self.stats.chunks_kept = len(kept)
        self.stats.chunks = [
            ChunkInfo(
                documents=tuple(chunk.documents),
                tokens=len(chunk),
                relevance=relevance[index],
                kept=index in kept,
            )
            for index, chunk in enumerate(chunks)
        ]

    def merged(self, kv_entries: int, question_tokens: int) -> None:
        """The answer is decoded over `kv_entries` merged entries and the question block."""
        self.stats.kv_entries_kept = kv_entries
        self.stats.prompt_tokens = kv_entries + question_tokens

    def reread(self, context_tokens: int, question_tokens: int) -> None:
        """The answer is decoded over `context_tokens` of prefix and kept chunks, read again as
        one prompt, and the question block."""
        self.stats.reread = True
        self.stats.kv_entries_kept = context_tokens
        self.stats.prompt_tokens = context_tokens + question_tokens

    def decoding(self, at: float) -> None:
        """Everything before decoding had run on the device at `at` (`device_work_done`)."""
        self.decoding_from = at

    def finished(self, new_tokens: int) -> AnswerStats:
        """The answer is complete with `new_tokens` tokens; its statistics."""
        self.stats.new_tokens = new_tokens
        self.stats.prefill_seconds = self.decoding_from - self.started
        self.stats.decode_seconds = time.perf_counter() - self.decoding_from
        self.stats.peak_memory_bytes = peak_memory(*self.devices)
        return self.stats
