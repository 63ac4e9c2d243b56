"""`PrefillActor`: one model replica, in a Ray actor, that reads the chunk batches dealt to it.

It loads a `ParallelCompEngine` from the coordinator's model path and settings, so it reads
chunks exactly as the coordinator would (`ParallelCompEngine.reading_key` checks it), and runs
the pipeline's own per-batch unit on its batches (`ParallelCompEngine.read_batches`).
"""

from __future__ import annotations

from pathlib import Path

from ..chunk_reader import Selection
from ..config import ParallelCompConfig
from ..engine import ParallelCompEngine
from ..loading import LoadOptions
from ..prefill_workers import ChunkBatches
from ..stages import BudgetPolicy, Calibrator, ChunkScorer, KVSelector

StageObjects = dict[str, ChunkScorer | KVSelector | BudgetPolicy | Calibrator | None]
"""The stage objects given to the coordinator's engine, by keyword (`scorer`, `selector`, ...)."""


class PrefillActor:
    """A model replica that prefills chunk batches and reads them for questions."""

    def __init__(
        self,
        model_name_or_path: str | Path,
        config: ParallelCompConfig,
        stages: StageObjects,
        load_options: LoadOptions,
    ) -> None:
        self.engine = ParallelCompEngine.from_pretrained(
            model_name_or_path, config, load_options=load_options, **stages
        )

    def reading_key(self) -> str:
        """The replica's `ParallelCompEngine.reading_key`."""
        return self.engine.reading_key

    def read(self, work: ChunkBatches) -> list[Selection]:
        """Prefill and read the batches of `work`: a selection per question, on the CPU."""
        return self.engine.read_batches(work)
