"""What the pipeline checks of a stage's result before using it, so that a custom stage with a bug
fails with `StageError` naming it, not deep inside torch. The checks need no device round trip."""

from __future__ import annotations

import math

import torch

from ..errors import StageError
from .base import Stage
from .budget import BudgetSplit


def _name(stage: Stage) -> str:
    return type(stage).__name__


def checked_relevance(scorer: Stage, relevance: object, rows: int) -> list[float]:
    """The relevance a scorer returned for `rows` chunks, as floats: a tensor of shape (rows,)
    with finite values."""
    if not isinstance(relevance, torch.Tensor) or tuple(relevance.shape) != (rows,):
        shape = tuple(relevance.shape) if isinstance(relevance, torch.Tensor) else None
        raise StageError(
            f"{_name(scorer)}.score must return a tensor of shape ({rows},), "
            f"got {type(relevance).__name__} of shape {shape}"
        )
    values = relevance.float().tolist()
    if not all(math.isfinite(value) for value in values):
        raise StageError(f"{_name(scorer)}.score returned non-finite relevance {values}")
    return values


def checked_picks(selector: Stage, picked: object, heads: int, count: int) -> torch.Tensor:
    """The indices a selector returned: a long tensor of shape (heads, count)."""
    if (
        not isinstance(picked, torch.Tensor)
        or picked.dtype != torch.long
        or tuple(picked.shape) != (heads, count)
    ):
        got = (picked.dtype, tuple(picked.shape)) if isinstance(picked, torch.Tensor) else picked
        raise StageError(
            f"{_name(selector)}.select must return a long tensor of shape ({heads}, {count}), "
            f"got {got!r}"
        )
    return picked


def checked_split(policy: Stage, split: object, chunks: int) -> BudgetSplit:
    """The split a budget policy returned for `chunks` chunks: 1 to `chunks` kept, and None or at
    least one entry a chunk."""
    entries = getattr(split, "entries_per_chunk", 0)
    if (
        not isinstance(split, BudgetSplit)
        or not 1 <= split.keep_chunks <= chunks
        or (entries is not None and entries < 1)
    ):
        raise StageError(
            f"{_name(policy)}.split({chunks}) must keep 1 to {chunks} chunks and at least one "
            f"entry a chunk (or None), got {split!r}"
        )
    return split


def checked_surviving(policy: Stage, surviving: object, keep: int) -> int:
    """The number of chunks a budget policy let survive out of `keep`: an int from 1 to `keep`."""
    if isinstance(surviving, bool) or not isinstance(surviving, int) or not 1 <= surviving <= keep:
        raise StageError(
            f"{_name(policy)}.surviving must return an int from 1 to {keep}, got {surviving!r}"
        )
    return surviving


def checked_shares(scorer: Stage, shares: object, chunks: int) -> list[float]:
    """The shares a scorer made of `chunks` relevances: that many floats from 0 to 1 that sum
    to 1."""
    values = list(shares) if isinstance(shares, list | tuple) else None
    if (
        values is None
        or len(values) != chunks
        or not all(isinstance(v, float | int) and 0.0 <= v <= 1.0 for v in values)
        or not math.isclose(sum(values), 1.0, rel_tol=1e-6, abs_tol=1e-6)
    ):
        raise StageError(
            f"{_name(scorer)}.shares must return {chunks} floats from 0 to 1 summing to 1, "
            f"got {shares!r}"
        )
    return [float(v) for v in values]
