"""The budget policy: how many chunks survive chunk eviction, and how many KV entries each keeps.

The split depends only on the number of chunks, so KV eviction can run right after each batch of
chunks is encoded, before the chunks to keep are known: memory then holds compressed chunks only.
Once every chunk is scored, the policy may keep fewer than the split's count (`surviving`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Self

from pydantic import AfterValidator, Field, StrictFloat, StrictInt

from .base import Stage

if TYPE_CHECKING:
    from ..config import ParallelCompConfig


@dataclass(frozen=True)
class BudgetSplit:
    """`keep_chunks` chunks survive; each keeps `entries_per_chunk` KV entries per layer and KV
    head (None: all of its entries)."""

    keep_chunks: int
    entries_per_chunk: int | None


def _count_or_fraction(keep: int | float) -> int | float:
    if isinstance(keep, int) and keep < 1:
        raise ValueError("keep_chunks must be an int >= 1 or a float in (0, 1]")
    if isinstance(keep, float) and not 0.0 < keep <= 1.0:
        raise ValueError("keep_chunks as a fraction must be in (0, 1]")
    return keep


KeepChunks = Annotated[StrictInt | StrictFloat, AfterValidator(_count_or_fraction)]
"""Chunks kept: a count (int >= 1) or a fraction of all chunks (float in (0, 1])."""
KVBudget = Annotated[int, Field(ge=1)] | None
"""KV entries per layer and KV head the answer attends to (None: every entry of the kept chunks)."""
RelativeShare = Annotated[float, Field(gt=0.0, le=1.0)] | None
"""Least share of the best chunk's that another kept chunk needs (None: no such floor)."""


class BudgetPolicy(Stage):
    """Splits the answer's budget over the chunks of a context."""

    @abstractmethod
    def split(self, chunks: int) -> BudgetSplit:
        """The split for a context of `chunks` chunks (at least one)."""

    def surviving(self, shares: list[float], keep: int) -> int:
        """How many of the `keep` most relevant chunks survive (1 to `keep`), given every chunk's
        share of relevance (the scorer's `shares`): by default all `keep`."""
        return keep


class EvenBudget(BudgetPolicy):
    """Keep the `keep_chunks` most relevant chunks (a count, or a fraction of all chunks) and
    share `kv_budget` entries evenly among them (None: keep whole chunks). With
    `keep_relative_share`, a chunk after the best survives only when its share is at least that
    fraction of the best chunk's share: a question whose evidence is in one chunk keeps that one,
    a question whose evidence is spread keeps every chunk that holds some (up to `keep_chunks`)."""

    keep_chunks: KeepChunks = 3
    kv_budget: KVBudget = 3072
    keep_relative_share: RelativeShare = None

    @classmethod
    def from_config(cls, config: ParallelCompConfig) -> Self:
        return cls(
            keep_chunks=config.keep_chunks,
            kv_budget=config.kv_budget,
            keep_relative_share=config.keep_relative_share,
        )

    def split(self, chunks: int) -> BudgetSplit:
        if isinstance(self.keep_chunks, float):
            keep = max(1, min(chunks, round(self.keep_chunks * chunks)))
        else:
            keep = min(chunks, self.keep_chunks)
        entries = None if self.kv_budget is None else max(1, self.kv_budget // keep)
        return BudgetSplit(keep, entries)

    def surviving(self, shares: list[float], keep: int) -> int:
        if self.keep_relative_share is None:
            return keep
        best = sorted(shares, reverse=True)[:keep]
        floor = self.keep_relative_share * best[0]
        return max(1, sum(share >= floor for share in best))
