"""ParallelComp over a Ray cluster: the chunk batches of one long request prefilled on several
Ray actors (one model replica per GPU, on any host of the cluster), the requesting engine keeping
the global best chunks and decoding.

    engine = ParallelCompEngine.from_pretrained(path, config,
                                                prefill_workers=RayPrefillWorkers(count=4))

This package needs Ray (`pip install 'parallelcomp-llm[ray]'`); `parallelcomp_llm` itself never
imports it. The Ray Serve deployment is `parallelcomp_llm.server.ray_serve`.
"""

try:
    import ray  # noqa: F401 - the clear error below, before any module of this package needs it
except ImportError as error:
    raise ImportError(
        "parallelcomp_llm.distributed needs Ray: pip install 'parallelcomp-llm[ray]'"
    ) from error

from .prefill import RayChunkPrefill
from .settings import RayPrefillWorkers

__all__ = ["RayChunkPrefill", "RayPrefillWorkers"]
