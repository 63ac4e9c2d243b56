"""`RayChunkPrefill`: the coordinator's side of chunk prefill on Ray actors.

The engine's pipeline hands it the batches of a long context (`ChunkBatches`), formed as the
engine's own encoder forms them; it deals them out round-robin to its `PrefillActor`s, waits for
all of them (checking meanwhile whether the request is still wanted, and cancelling the actors'
work when not), and returns each actor's selections for the pipeline to add into one.
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from ..chunk_reader import Selection
from ..config import ParallelCompConfig
from ..loading import LoadOptions
from ..prefill_workers import ChunkBatches
from .actor import PrefillActor, StageObjects


class RayChunkPrefill:
    """`count` Ray actors, each a model replica loaded from `model_name_or_path` with `config`
    and `load_options` (and `gpus` GPUs, `cpus` CPUs), that read chunk batches for one engine."""

    def __init__(
        self,
        model_name_or_path: str,
        config: ParallelCompConfig,
        stages: StageObjects,
        load_options: LoadOptions,
        count: int,
        gpus: int,
        cpus: float,
        poll_s: float,
    ) -> None:
        actor = ray.remote(num_gpus=gpus, num_cpus=cpus)(PrefillActor)
        self.actors = [
            actor.remote(model_name_or_path, config, stages, load_options) for _ in range(count)
        ]
        self.poll_s = poll_s
        self.reading_keys: list[str] = ray.get([a.reading_key.remote() for a in self.actors])
        """Each actor's `ParallelCompEngine.reading_key`."""

    def read(self, work: ChunkBatches, check: Callable[[], None]) -> list[list[Selection]]:
        """Every batch of `work` read by the actors, dealt out round-robin: per actor that got
        batches, a selection per question. `check` is called every `poll_s` seconds while they
        run; when it raises, their work is cancelled."""
        parts = work.share(len(self.actors))
        refs = [actor.read.remote(part) for actor, part in zip(self.actors, parts)]
        pending = refs
        try:
            while pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=self.poll_s)
                check()
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
        return ray.get(refs)
