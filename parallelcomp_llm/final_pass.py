"""The question's second pass over the merged KV, for one request or several at once (and the
plain prompt's pass of `complete` and `chat`).

Each row is `[padding][merged KV of its request][padding][question]`: caches of different sizes
and questions of different lengths are left-padded and masked, and every question starts right
after its own longest kept chunk, so question and answer positions stay inside the trained window.
A row without merged KV (kept chunks read again, `reread`) is a whole prompt from position 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from .attention import AttentionProbe, Calibration
from .device import model_device
from .kvcache import cache_from_tensors, run_on_cache
from .merging import MergedKV
from .stages.calibration import Calibrator


@dataclass
class FinalRow:
    """One request's input to the final pass: its merged KV (None for none) and the tokens
    that follow it from position `start`."""

    merged: MergedKV | None
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


def _entries(row: FinalRow) -> int:
    return row.merged.entries if row.merged is not None else 0


def _batched(parts: list[torch.Tensor | None], width: int) -> torch.Tensor:
    """One layer's KV of every row, left-padded to `width` entries (a single row as it is; None
    for a row without merged KV)."""
    if len(parts) == 1 and parts[0] is not None:
        return parts[0]
    reference = next(part for part in parts if part is not None)
    empty = reference[..., :0, :]
    return torch.cat([_left_pad(empty if part is None else part, width) for part in parts])


@torch.inference_mode()
def run_final_pass(
    model: PreTrainedModel,
    rows: list[FinalRow],
    pad_id: int,
    calibrator: Calibrator | None,
) -> FinalState:
    """Run every row's question over its merged KV in one batch, with the calibrator's masks
    when there is one; return the decoding state.

    The rows' merged KV is handed over layer by layer into the batch (`MergedKV.hand_over`),
    and the cache alone then holds it, so that the batch's KV is never in memory twice. Rows
    without merged KV are padding there; when no row has any, the cache starts empty. The
    calibrator needs every row merged.
    """
    device = model_device(model)
    width = max(_entries(row) for row in rows)
    q_width = max(len(row.question_ids) for row in rows)
    merged = [row.merged for row in rows if row.merged is not None]
    keys, values = [], []
    for layer in range(len(merged[0].keys) if merged else 0):
        handed = [row.merged.hand_over(layer) if row.merged else (None, None) for row in rows]
        keys.append(_batched([layer_keys for layer_keys, _ in handed], width))
        values.append(_batched([layer_values for _, layer_values in handed], width))
        del handed
    cache = cache_from_tensors(keys, values) if merged else DynamicCache()
    del keys, values, merged
    probe = None
    if calibrator is not None:
        calibration = Calibration(calibrator)
        for layer in calibrator.layer_range:
            calibration.offsets[layer] = torch.cat(
                [_left_pad(r.merged.offsets[layer], width, -1) for r in rows]
            )
            calibration.lengths[layer] = torch.cat(
                [_left_pad(r.merged.lengths[layer], width) for r in rows]
            )
        probe = AttentionProbe(calibration=calibration)
    input_ids, positions, masks = [], [], []
    for row in rows:
        missing = q_width - len(row.question_ids)
        input_ids.append([pad_id] * missing + row.question_ids)
        positions.append(
            [row.start] * missing + list(range(row.start, row.start + len(row.question_ids)))
        )
        masks.append(
            [0] * (width - _entries(row))
            + [1] * _entries(row)
            + [0] * missing
            + [1] * len(row.question_ids)
        )
    attention_mask = torch.tensor(masks, device=device) if len(rows) > 1 else None
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


@torch.inference_mode()
def run_prompt(model: PreTrainedModel, token_ids: list[int]) -> FinalState:
    """Run a plain prompt from position 0 with a fresh cache (no context, no probe)."""
    device = model_device(model)
    cache = DynamicCache()
    input_ids = torch.tensor([token_ids], dtype=torch.long, device=device)
    positions = torch.arange(len(token_ids), device=device)[None]
    logits = run_on_cache(model, input_ids, positions, cache, logits_to_keep=1)
    return FinalState(cache, None, logits[:, -1], [len(token_ids)], None)
