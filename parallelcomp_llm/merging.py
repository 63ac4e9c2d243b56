"""From encoded batches to the decode cache: keep each chunk's (evicted) KV, merge the kept ones.

After a batch's question pass, every row's KV is copied out of the batch: the template prefix
(once, unless deduplication is off) and the chunk's context entries, reduced to the KV budget per
layer and head. The kept chunks are then concatenated, prefix first, into one KV per layer, with
the attention-bias calibration candidates of every entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import eviction
from .config import ParallelCompConfig
from .prefill import EncodedBatch


@dataclass
class StoredChunk:
    """A chunk's KV after KV eviction, per layer (kv_heads, entries, head_dim), with the offsets of
    the kept entries in the chunk (kv_heads, entries) and, when kept, the template prefix's KV."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    offsets: list[torch.Tensor]
    prefix_keys: list[torch.Tensor] | None
    prefix_values: list[torch.Tensor] | None


@dataclass
class MergedKV:
    """Merged KV of the kept chunks, per layer (1, kv_heads, entries, head_dim); calibration
    candidates per layer (1, kv_heads, entries) when calibration is on."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    candidates: dict[int, torch.Tensor] | None

    @property
    def entries(self) -> int:
        return int(self.keys[0].shape[2])


def store_chunk(
    batch: EncodedBatch,
    row: int,
    length: int,
    prefix: int,
    window_scores: dict[int, torch.Tensor],
    keep_prefix: bool,
    budget: int | None,
    config: ParallelCompConfig,
) -> StoredChunk:
    """Copy row `row` of `batch` out: its prefix (if `keep_prefix`) and its context KV, evicted
    down to `budget` entries per layer and head by the pooled window scores (None: all kept)."""
    context = slice(prefix, prefix + length)
    stored = StoredChunk(
        length, [], [], [], [] if keep_prefix else None, [] if keep_prefix else None
    )
    for layer, (batch_keys, batch_values) in enumerate(zip(batch.keys, batch.values)):
        layer_keys, layer_values = batch_keys[row], batch_values[row]
        if budget is not None and length > budget:
            scores = window_scores[layer][row, :, context]
            picked = eviction.top_entries(
                eviction.pooled_scores(scores, config.pooling_kernel), budget
            )
            stored.keys.append(eviction.gather_entries(layer_keys[:, context], picked))
            stored.values.append(eviction.gather_entries(layer_values[:, context], picked))
        else:
            picked = torch.arange(length, device=layer_keys.device).expand(layer_keys.shape[0], -1)
            stored.keys.append(layer_keys[:, context].clone())
            stored.values.append(layer_values[:, context].clone())
        stored.offsets.append(picked)
        if keep_prefix:
            stored.prefix_keys.append(layer_keys[:, :prefix].clone())
            stored.prefix_values.append(layer_values[:, :prefix].clone())
    return stored


def merge_chunks(
    stored: list[StoredChunk], kept: list[int], config: ParallelCompConfig
) -> MergedKV:
    """Concatenate the kept chunks' KV in order; the first stored chunk's prefix leads when
    `dedupe_prefix`, else each kept chunk brings its own."""
    calibrate = config.calibration_layers is not None
    keys, values, candidates = [], [], {}
    for layer in range(len(stored[0].keys)):
        key_parts, value_parts, candidate_parts = [], [], []
        for position, index in enumerate(kept):
            piece = stored[index]
            if position == 0 or not config.dedupe_prefix:
                owner = stored[0] if config.dedupe_prefix else piece
                key_parts.append(owner.prefix_keys[layer])
                value_parts.append(owner.prefix_values[layer])
                if calibrate:
                    prefix_entries = owner.prefix_keys[layer][..., 0]
                    candidate_parts.append(torch.zeros_like(prefix_entries, dtype=torch.bool))
            key_parts.append(piece.keys[layer])
            value_parts.append(piece.values[layer])
            if calibrate:
                candidate_parts.append(_in_region(piece.offsets[layer], piece.length, config))
        keys.append(torch.cat(key_parts, dim=1)[None])
        values.append(torch.cat(value_parts, dim=1)[None])
        if calibrate:
            candidates[layer] = torch.cat(candidate_parts, dim=1)[None]
    return MergedKV(keys, values, candidates if calibrate else None)


def _in_region(offsets: torch.Tensor, length: int, config: ParallelCompConfig) -> torch.Tensor:
    """Which kept entries (by offset in their chunk) lie in the calibration region."""
    size = config.calibration_region_tokens
    sink, recent = offsets < size, offsets >= length - size
    return {
        "sink": sink,
        "recent": recent,
        "middle": ~(sink | recent),
        "all": torch.ones_like(sink),
    }[config.calibration_region]
