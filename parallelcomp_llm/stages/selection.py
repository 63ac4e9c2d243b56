"""KV selectors: which KV entries of a kept chunk the answer attends to, per layer and KV head.

Inside each chunk, every layer and KV head keeps at most its share of the KV budget. A selector
sees one chunk's context entries in one layer (`ChunkEntries`) and returns the indices to keep,
in ascending order. `ScoredSelector` keeps the top-scored entries, so most selectors only say how
an entry scores (as kvpress's scorer presses do).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Self

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from .base import Registry, Stage

if TYPE_CHECKING:
    from ..config import ParallelCompConfig


def _odd(kernel: int) -> int:
    if kernel % 2 == 0:
        raise ValueError("pooling_kernel must be odd")
    return kernel


ObservationWindow = Annotated[int, Field(ge=1)]
"""Last question tokens whose attention a stage reads (all of them when the question is shorter)."""
OBSERVATION_WINDOW = 32
"""The default window of the stages that read attention (tuned: see `docs/measured.md`)."""
PoolingKernel = Annotated[int, Field(ge=1), AfterValidator(_odd)]
"""Width of the max-pooling over token scores (odd)."""


@dataclass(frozen=True)
class ChunkEntries:
    """One chunk's context entries in one layer: keys and values (kv_heads, tokens, head_dim)
    and, when the selector asked for an observation window, the attention of the question's last
    tokens on them (kv_heads, tokens), summed over those tokens."""

    layer: int
    keys: torch.Tensor
    values: torch.Tensor
    attention: torch.Tensor | None

    @property
    def tokens(self) -> int:
        return int(self.keys.shape[1])


class KVSelector(Stage):
    """Picks the KV entries of a chunk to keep in one layer, within a budget per KV head."""

    observation_window: ObservationWindow | None = None
    """Last question tokens whose attention the selector reads (None: it reads keys and values
    only)."""

    @abstractmethod
    def select(self, entries: ChunkEntries, budget: int) -> torch.Tensor:
        """Indices (kv_heads, min(budget, tokens)) of the entries to keep, ascending per head."""


SELECTORS: Registry[KVSelector] = Registry("KV selector", KVSelector)


def top_entries(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices (heads, budget) of each head's `budget` highest scores (heads, tokens), ascending."""
    budget = min(budget, scores.shape[-1])
    return scores.topk(budget, dim=-1).indices.sort(dim=-1).values


class ScoredSelector(KVSelector):
    """Keeps each KV head's highest-scored entries; subclasses say how entries score."""

    @abstractmethod
    def score(self, entries: ChunkEntries) -> torch.Tensor:
        """A score per entry and KV head (kv_heads, tokens): higher is kept first."""

    def select(self, entries: ChunkEntries, budget: int) -> torch.Tensor:
        return top_entries(self.score(entries), budget)


@SELECTORS.register("snapkv")
class SnapKVSelector(ScoredSelector):
    """SnapKV: the attention of the last `observation_window` question tokens on each entry,
    max-pooled over `pooling_kernel` neighbours so that nearby tokens survive together."""

    observation_window: ObservationWindow = OBSERVATION_WINDOW
    pooling_kernel: PoolingKernel = 15

    @classmethod
    def from_config(cls, config: ParallelCompConfig) -> Self:
        return cls(
            observation_window=config.observation_window, pooling_kernel=config.pooling_kernel
        )

    def score(self, entries: ChunkEntries) -> torch.Tensor:
        scores = entries.attention
        if self.pooling_kernel <= 1:
            return scores
        padding = self.pooling_kernel // 2
        return F.max_pool1d(scores[None], self.pooling_kernel, stride=1, padding=padding)[0]
