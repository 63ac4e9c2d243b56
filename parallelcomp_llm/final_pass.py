"""The question's second pass over the merged KV, for one request or several at once.

Each row is `[padding][merged KV of its request][padding][question]`: caches of different sizes
and questions of different lengths are left-padded and masked, and every question starts right
after its own longest kept chunk, so question and answer positions stay inside the trained window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from .attention import AttentionProbe, CalibrationRule
from .kvcache import cache_from_tensors, run_on_cache
from .merging import MergedKV


@dataclass
class FinalRow:
    """One request's input to the final pass."""

    merged: MergedKV
    question_ids: list[int]
    start: int


@dataclass
class FinalState:
    """What decoding continues from: the cache, its padding mask (None for one unpadded row),
    the last logits per row (rows, vocab), each row's next position, and the probe."""

    cache: object
    attention_mask: torch.Tensor | None
    logits: torch.Tensor
    next_positions: list[int]
    probe: AttentionProbe | None


def _left_pad(tensor: torch.Tensor, width: int, value: float = 0) -> torch.Tensor:
    padding = width - tensor.shape[-2] if tensor.ndim == 4 else width - tensor.shape[-1]
    if padding == 0:
        return tensor
    if tensor.ndim == 4:
        filler = tensor.new_full((*tensor.shape[:2], padding, tensor.shape[-1]), value)
        return torch.cat([filler, tensor], dim=2)
    return torch.cat([tensor.new_full((*tensor.shape[:-1], padding), value), tensor], dim=-1)


@torch.inference_mode()
def run_final_pass(
    model: PreTrainedModel,
    rows: list[FinalRow],
    pad_id: int,
    calibration: tuple[range, float] | None,
) -> FinalState:
    """Run every row's question over its merged KV in one batch; return the decoding state."""
    device = rows[0].merged.keys[0].device
    width = max(row.merged.entries for row in rows)
    q_width = max(len(row.question_ids) for row in rows)
    layers = len(rows[0].merged.keys)
    keys = [torch.cat([_left_pad(r.merged.keys[i], width) for r in rows]) for i in range(layers)]
    values = [
        torch.cat([_left_pad(r.merged.values[i], width) for r in rows]) for i in range(layers)
    ]
    probe = None
    if calibration is not None:
        layer_range, threshold = calibration
        candidates = {
            layer: torch.cat([_left_pad(r.merged.candidates[layer], width, False) for r in rows])
            for layer in layer_range
        }
        probe = AttentionProbe(calibration=CalibrationRule(layer_range, candidates, threshold))
    input_ids, positions, masks = [], [], []
    for row in rows:
        missing = q_width - len(row.question_ids)
        input_ids.append([pad_id] * missing + row.question_ids)
        positions.append(
            [row.start] * missing + list(range(row.start, row.start + len(row.question_ids)))
        )
        masks.append(
            [0] * (width - row.merged.entries)
            + [1] * row.merged.entries
            + [0] * missing
            + [1] * len(row.question_ids)
        )
    attention_mask = torch.tensor(masks, device=device) if len(rows) > 1 else None
    cache = cache_from_tensors(keys, values)
    logits = run_on_cache(
        model,
        torch.tensor(input_ids, device=device),
        torch.tensor(positions, device=device),
        cache,
        attention_mask,
        probe,
        logits_to_keep=1,
    )
    next_positions = [row.start + len(row.question_ids) for row in rows]
    return FinalState(cache, attention_mask, logits[:, -1], next_positions, probe)
