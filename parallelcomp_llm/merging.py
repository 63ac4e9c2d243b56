"""From encoded batches to the decode cache: keep each chunk's selected KV, merge the kept ones.

After a batch's question pass, every row's KV is copied out of the batch: the template prefix
and the chunk's context entries the KV selector picked. The kept chunks are then concatenated,
prefix first, into one KV per layer; for calibration, each merged entry also carries its offset
in its chunk and that chunk's length. The prefix comes before every chunk under causal
attention, so its KV is the same in every row, and a deduplicated merge takes it from the first
kept chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .device import Placement, placed
from .prefill import EncodedBatch


@dataclass
class StoredChunk:
    """A chunk's KV after KV eviction, per layer (kv_heads, entries, head_dim), with the offsets of
    the kept entries in the chunk (kv_heads, entries), and the template prefix's KV."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    offsets: list[torch.Tensor]
    prefix_keys: list[torch.Tensor]
    prefix_values: list[torch.Tensor]

    def to(self, devices: Placement) -> StoredChunk:
        """This chunk's KV on `devices`, one per layer or one for all (the CPU, to pass it to
        another process)."""
        return StoredChunk(
            self.length,
            *(
                placed(tensors, devices)
                for tensors in (
                    self.keys,
                    self.values,
                    self.offsets,
                    self.prefix_keys,
                    self.prefix_values,
                )
            ),
        )


@dataclass
class MergedKV:
    """Merged KV of the kept chunks, per layer (1, kv_heads, entries, head_dim); for the layers
    asked for, each entry's offset in its chunk's context and that chunk's length
    (1, kv_heads, entries; offset -1 for the template prefix)."""

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    offsets: dict[int, torch.Tensor]
    lengths: dict[int, torch.Tensor]
    entries: int

    def hand_over(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s keys and values, which the merge then no longer holds: their memory
        goes as soon as the taker is done with them."""
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            raise RuntimeError(f"layer {layer} of this merged KV was handed over already")
        self.keys[layer] = self.values[layer] = None
        return keys, values


def _gather(states: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Pick entries `indices` (heads, n) from `states` (heads, tokens, dim)."""
    return states.gather(1, indices[..., None].expand(-1, -1, states.shape[-1]))


def store_chunk(
    batch: EncodedBatch,
    row: int,
    length: int,
    prefix: int,
    picks: list[torch.Tensor] | None,
) -> StoredChunk:
    """Copy row `row` of `batch` out: its prefix and the context entries `picks[layer]`
    (kv_heads, n) of each layer, or all of them when `picks` is None."""
    context = slice(prefix, prefix + length)
    stored = StoredChunk(length, [], [], [], [], [])
    for layer, (batch_keys, batch_values) in enumerate(zip(batch.keys, batch.values)):
        layer_keys, layer_values = batch_keys[row], batch_values[row]
        if picks is not None:
            picked = picks[layer]
            stored.keys.append(_gather(layer_keys[:, context], picked))
            stored.values.append(_gather(layer_values[:, context], picked))
        else:
            picked = torch.arange(length, device=layer_keys.device).expand(layer_keys.shape[0], -1)
            stored.keys.append(layer_keys[:, context].clone())
            stored.values.append(layer_values[:, context].clone())
        stored.offsets.append(picked)
        stored.prefix_keys.append(layer_keys[:, :prefix].clone())
        stored.prefix_values.append(layer_values[:, :prefix].clone())
    return stored


def merge_chunks(
    stored: Mapping[int, StoredChunk],
    kept: list[int],
    dedupe_prefix: bool,
    positions_in: range | None = None,
) -> MergedKV:
    """Concatenate the kept chunks' KV (`stored[index]` for each index of `kept`) in order; the
    first kept chunk's prefix leads when `dedupe_prefix`, else each kept chunk brings its own.
    Entry positions are recorded for the layers `positions_in`."""
    keys, values, offsets, lengths = [], [], {}, {}
    first = stored[kept[0]]
    for layer in range(len(first.keys)):
        track = positions_in is not None and layer in positions_in
        key_parts, value_parts, offset_parts, length_parts = [], [], [], []
        for position, index in enumerate(kept):
            piece = stored[index]
            if position == 0 or not dedupe_prefix:
                owner = first if dedupe_prefix else piece
                key_parts.append(owner.prefix_keys[layer])
                value_parts.append(owner.prefix_values[layer])
                if track:
                    prefix_entries = owner.prefix_keys[layer][..., 0]
                    offset_parts.append(torch.full_like(prefix_entries, -1, dtype=torch.long))
                    length_parts.append(torch.zeros_like(prefix_entries, dtype=torch.long))
            key_parts.append(piece.keys[layer])
            value_parts.append(piece.values[layer])
            if track:
                offset_parts.append(piece.offsets[layer])
                length_parts.append(torch.full_like(piece.offsets[layer], piece.length))
        keys.append(torch.cat(key_parts, dim=1)[None])
        values.append(torch.cat(value_parts, dim=1)[None])
        if track:
            offsets[layer] = torch.cat(offset_parts, dim=1)[None]
            lengths[layer] = torch.cat(length_parts, dim=1)[None]
    return MergedKV(keys, values, offsets, lengths, int(keys[0].shape[2]))
