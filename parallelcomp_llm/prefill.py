"""Parallel prefill: encode several `[prefix][chunk]` rows per forward pass, then the question.

Each row's position ids start again at 0, so no position exceeds the trained window however long
the whole context is. Rows are right-padded to one width: the pads come after every real token,
so causal attention alone keeps them out and the prefill needs no mask (a padding mask would push
SDPA off its fastest kernel). The question pass then runs the same question block after every
row at once, masking the pads, on top of the batch's stored KV. Either pass may stop after the
model's first layers, when only their attention is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from .attention import AttentionProbe
from .device import Placement, model_device, placed
from .kvcache import cache_from_tensors, run_on_cache, tensors_of

QUESTION_BUCKET = 32


@dataclass
class EncodedBatch:
    """KV of right-padded `[prefix][chunk]` rows: per layer (rows, kv_heads, width, head_dim),
    each layer's on that layer's device; the model's first layers only, when the prefill stopped
    after them.

    Row `r` holds chunk `chunk_indices[r]`: `lengths[r]` real entries, then padding.
    """

    chunk_indices: list[int]
    lengths: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def width(self) -> int:
        return int(self.keys[0].shape[2])

    @property
    def attention_mask(self) -> torch.Tensor:
        device = self.keys[0].device
        positions = torch.arange(self.width, device=device)[None, :]
        return (positions < torch.tensor(self.lengths, device=device)[:, None]).long()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def to(self, devices: Placement) -> EncodedBatch:
        """This batch with each layer's KV on `devices` (one per layer, or one for all)."""
        return EncodedBatch(
            self.chunk_indices,
            self.lengths,
            placed(self.keys, devices),
            placed(self.values, devices),
        )


@torch.inference_mode()
def prefill_rows(
    model: PreTrainedModel,
    rows: list[list[int]],
    pad_id: int,
    chunk_indices: list[int],
    layers: int | None = None,
) -> EncodedBatch:
    """Run the model over `rows` (token id lists) as one right-padded batch; keep the KV (of the
    first `layers` decoder layers only, when given: the pass stops after them)."""
    device = model_device(model)
    width = max(len(row) for row in rows)
    input_ids = torch.tensor(
        [row + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long, device=device
    )
    position_ids = torch.arange(width, device=device)[None, :].expand(len(rows), -1)
    cache = DynamicCache()
    run_on_cache(model, input_ids, position_ids, cache, logits_to_keep=1, layers=layers)
    keys, values = tensors_of(cache)
    return EncodedBatch(chunk_indices, [len(row) for row in rows], keys, values)


@torch.inference_mode()
def question_pass(
    model: PreTrainedModel,
    batch: EncodedBatch,
    question_ids: list[int],
    probe: AttentionProbe,
    pad_id: int,
    layers: int | None = None,
) -> torch.Tensor | None:
    """Run the question block after every row of `batch`; return its logits (rows, q, vocab),
    or None when the pass stops after its first `layers` decoder layers.

    Each row's question starts at the position right after that row's own tokens. The question
    is left-padded (masked) to a multiple of `QUESTION_BUCKET` tokens, so that questions of
    different lengths reuse the same kernel shapes; the padding changes no score. The batch's
    stored KV is left as it was.
    """
    device = model_device(model)
    rows, q_len = len(batch.lengths), len(question_ids)
    missing = -q_len % QUESTION_BUCKET
    tokens = [pad_id] * missing + question_ids
    input_ids = torch.tensor([tokens], dtype=torch.long, device=device).expand(rows, -1)
    question_mask = torch.tensor([[0] * missing + [1] * q_len], device=device).expand(rows, -1)
    attention_mask = torch.cat([batch.attention_mask.to(device), question_mask], dim=1)
    offsets = torch.tensor([0] * missing + list(range(q_len)), device=device)
    position_ids = torch.tensor(batch.lengths, device=device)[:, None] + offsets[None, :]
    cache = cache_from_tensors(batch.keys, batch.values)
    return run_on_cache(model, input_ids, position_ids, cache, attention_mask, probe, q_len, layers)


@torch.inference_mode()
def question_alone(
    model: PreTrainedModel,
    prefix_ids: list[int],
    question_ids: list[int],
    start: int,
    probe: AttentionProbe,
) -> None:
    """Run the template prefix and the question block as one row, the question at positions from
    `start` (as if after a chunk that ends there), for what `probe` records."""
    device = model_device(model)
    tokens = prefix_ids + question_ids
    positions = list(range(len(prefix_ids))) + list(range(start, start + len(question_ids)))
    input_ids = torch.tensor([tokens], dtype=torch.long, device=device)
    attention_mask = torch.ones_like(input_ids)
    position_ids = torch.tensor([positions], device=device)
    run_on_cache(model, input_ids, position_ids, DynamicCache(), attention_mask, probe, 1)
