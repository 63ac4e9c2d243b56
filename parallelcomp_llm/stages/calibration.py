"""Attention-bias calibration: KV entries that draw excessive attention are masked out.

Parallel chunks give the question several attention peaks (each chunk's start, its end, some
middle tokens). During the question's pass over the merged KV, a calibrator looks at the
question's mean attention in its layers and names the entries to mask there, for that pass and
for every decoding step after it (the paper's finding: shallow layers matter for retrieval, deep
ones for reasoning, so calibration is off unless a layer range is given).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Annotated, Literal, Self

import torch
from pydantic import AfterValidator, Field

from .base import Stage

if TYPE_CHECKING:
    from ..config import ParallelCompConfig


def _ordered(layers: tuple[int, int]) -> tuple[int, int]:
    first, last = layers
    if first < 0 or last < first:
        raise ValueError("calibration layers must be (first, last) with 0 <= first <= last")
    return layers


LayerRange = Annotated[tuple[int, int], AfterValidator(_ordered)]
"""Inclusive range of layers (first, last)."""
Region = Literal["sink", "recent", "middle", "all"]
"""Where in its chunk an entry may be masked: the first or last `region_tokens`, between, or all."""
RegionTokens = Annotated[int, Field(ge=1)]
BiasThreshold = Annotated[float, Field(gt=1.0, allow_inf_nan=False)]
"""Multiple of the uniform attention share (1 / keys) above which an entry is a bias entry."""


class Calibrator(Stage):
    """Names the attention-bias entries of the merged KV in the layers `layers` (inclusive)."""

    layers: LayerRange

    @property
    def layer_range(self) -> range:
        return range(self.layers[0], self.layers[1] + 1)

    @abstractmethod
    def biased(
        self, attention: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Which merged entries to mask in one layer (bool, like `offsets`), given the
        question's mean attention over every key of the pass (rows, kv_heads, keys) and the
        entries' offsets in their chunks' contexts and those chunks' lengths (like the result;
        offset -1 for the template prefix and padding, which are never masked)."""


class BiasCalibrator(Calibrator):
    """Masks the entries in `region` of their chunk whose mean attention exceeds `threshold`
    times the uniform share (1 / number of keys)."""

    region: Region = "all"
    region_tokens: RegionTokens = 100
    threshold: BiasThreshold = 10.0

    @classmethod
    def from_config(cls, config: ParallelCompConfig) -> Self:
        return cls(
            layers=config.calibration_layers,
            region=config.calibration_region,
            region_tokens=config.calibration_region_tokens,
            threshold=config.calibration_threshold,
        )

    def biased(
        self, attention: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        share = self.threshold / attention.shape[-1]
        over = attention[..., : offsets.shape[-1]] > share
        sink, recent = offsets < self.region_tokens, offsets >= lengths - self.region_tokens
        region = {
            "sink": sink,
            "recent": recent,
            "middle": ~(sink | recent),
            "all": torch.ones_like(sink),
        }[self.region]
        return over & region & (offsets >= 0)
