"""The Ray cluster this process works with: connecting to it, and how many GPUs a model replica
takes there."""

from __future__ import annotations

import ray


def connected() -> None:
    """Connect to the Ray cluster (`ray.init()`: `RAY_ADDRESS`, else a local one) unless this
    process already has."""
    if not ray.is_initialized():
        ray.init()


def replica_gpus(asked: int | None) -> int:
    """GPUs one model replica takes: `asked`, or when None, 1 if the cluster has GPUs, else 0."""
    if asked is not None:
        return asked
    connected()
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
