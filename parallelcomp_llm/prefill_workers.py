"""What the pipeline hands to prefill workers: batches of chunks to prefill and read for questions.

A long context's chunk batches may run on other model replicas (`parallelcomp_llm.distributed`
runs them on Ray actors). The pipeline forms the batches as its own encoder would (the same
chunks in the same rows, so every forward pass is the same computation), deals them out as
`ChunkBatches`, and adds the `Selection`s that come back into each question's own: the workers
return each chunk's relevance and the stored KV of only their best `keep_chunks` chunks (none at
all for a question that reads its kept chunks again instead of merging them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .chunk_reader import Selection
from .requests import Encoding
from .stages import BudgetSplit


@dataclass
class ChunkBatches:
    """Batches of one encoding's chunks (the chunk indices of each batch's rows) to prefill and
    read for `questions` (question blocks' token ids), each with its selection so far."""

    encoding: Encoding
    batches: list[list[int]]
    questions: list[list[int]]
    selections: list[Selection]
    split: BudgetSplit

    def share(self, workers: int) -> list[ChunkBatches]:
        """The batches dealt out round-robin to at most `workers` workers (none gets no batch)."""
        return [
            ChunkBatches(
                self.encoding,
                self.batches[first::workers],
                self.questions,
                self.selections,
                self.split,
            )
            for first in range(min(workers, len(self.batches)))
        ]


class PrefillWorkers(Protocol):
    """Model replicas that read chunk batches for the pipeline."""

    reading_keys: list[str]
    """Each replica's `ParallelCompEngine.reading_key`: it must be the pipeline's engine's."""

    def read(self, work: ChunkBatches, check: Callable[[], None]) -> list[list[Selection]]:
        """Every batch of `work` read by some worker: per worker, a selection per question (on
        the CPU). `check` is called while waiting, and may raise to give the work up."""
        ...
