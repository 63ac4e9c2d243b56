"""`RayPrefillWorkers`: how many Ray actors prefill chunk batches, and what each one holds."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from ..config import ParallelCompConfig
from ..errors import CheckedModel
from ..loading import LoadOptions
from .actor import StageObjects
from .cluster import connected, replica_gpus
from .prefill import RayChunkPrefill


class RayPrefillWorkers(CheckedModel):
    """Settings of the prefill workers of `ParallelCompEngine.from_pretrained(...,
    prefill_workers=...)`: `count` Ray actors, each a model replica on one GPU (or on CPUs).

    Every actor loads the model from the engine's path (which must be readable, or downloadable,
    on every host of the Ray cluster) with the engine's settings. `start` connects to the Ray
    cluster (`ray.init()` when this process has not: `RAY_ADDRESS`, else a local one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(2, ge=1, le=4096, description="Ray actors, one model replica each.")
    gpus_per_worker: int | None = Field(
        None,
        ge=0,
        le=1,
        description="1: each actor takes a GPU and runs the model on it; 0: on CPUs. None: 1 "
        "when the Ray cluster has GPUs.",
    )
    cpus_per_worker: float = Field(1.0, gt=0, le=1024, description="CPUs Ray reserves per actor.")
    wait_poll_s: float = Field(
        0.05,
        gt=0,
        le=60,
        description="How often the engine, while its workers run, checks whether the request is "
        "still wanted (deadline, cancellation).",
    )

    def start(
        self,
        model_name_or_path: str | Path,
        config: ParallelCompConfig,
        stages: StageObjects,
        load_options: LoadOptions,
    ) -> RayChunkPrefill:
        """Start the actors, each loading the model with the engine's `load_options` (but its
        own placement: one whole device, no device map); returns once all have loaded it."""
        connected()
        gpus = replica_gpus(self.gpus_per_worker)
        worker_config = config.model_copy(update={"device": "cuda" if gpus else "cpu"})
        return RayChunkPrefill(
            str(model_name_or_path),
            worker_config,
            stages,
            load_options.model_copy(update={"device_map": None, "max_memory": None}),
            self.count,
            gpus,
            self.cpus_per_worker,
            self.wait_poll_s,
        )
