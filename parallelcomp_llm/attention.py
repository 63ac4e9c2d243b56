"""Attention hook: the model's own kernel, plus what ParallelComp needs to see of attention.

The engine switches the model to an attention implementation registered here
(`parallelcomp_sdpa` or `parallelcomp_flash_attention_2`). It calls transformers' kernel of the
same name unchanged (SDPA on CUDA, for passes of several queries, choosing among `SDPA_BACKENDS`:
not cuDNN's), and, while an
`AttentionProbe` is active in the calling thread:

- records the attention of the last `window` queries over all keys, summed over those queries and
  averaged over the query heads of each KV group (the SnapKV statistic), per layer, for each
  observation window a stage asked for;
- records the last `query_window` queries themselves (after the rotary embedding), per layer, for
  a scorer that matches them against the chunks' keys;
- in the calibrator's layers, has it name the KV entries that draw excessive attention from the
  queries, and masks them out for this pass and every later pass of the request.

Only `window x keys` scores are computed explicitly, never the full attention matrix.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .stages.calibration import Calibrator

BASE_KERNELS = ("sdpa", "flash_attention_2")
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""The kernels the hooked `sdpa` lets torch choose from on CUDA for a pass of several queries
(chunk prefill, question pass, final pass): all but cuDNN's, which torch prefers on Hopper GPUs but
which measured slower there on an H200 (8B shape, time to first token 0.48 s with it and 0.36 s
without at 8K; benchmarks/results/anatomy_llama3-8b-shape_20261204T040306Z.json; 0.50 s and
1.51 s at 8K and 32K with it in the chunk prefill alone, speed_llama3-8b-shape_compiled_
20261204T041812Z.json). Single-query decoding steps keep torch's choice, the faster one for them
(cuda_graph steps at 84 tok/s without cuDNN, 108 tok/s with it; the same two files)."""
_ACTIVE_PROBE: contextvars.ContextVar[AttentionProbe | None] = contextvars.ContextVar(
    "parallelcomp_probe", default=None
)


def implementation_name(base: str) -> str:
    """Name under which the hooked version of transformers' kernel `base` is registered."""
    return f"parallelcomp_{base}"


class AttentionProbe:
    """What one forward pass should record or change in attention (one per request phase).

    `window_scores[window][layer]` (rows, kv_heads, keys) holds the attention of the last
    `window` queries for each window in `windows` (each at most the pass's query count), in the
    layers `window_layers` (None: every layer);
    `queries[layer]` (rows, heads, query_window, head_dim) the last `query_window` queries, and
    `scaling` the kernel's softmax scale.
    """

    def __init__(
        self,
        windows: Iterable[int] = (),
        calibration: Calibration | None = None,
        query_window: int | None = None,
        window_layers: frozenset[int] | None = None,
    ) -> None:
        self.windows = sorted(set(windows))
        self.window_layers = window_layers
        self.calibration = calibration
        self.query_window = query_window
        self.window_scores: dict[int, dict[int, torch.Tensor]] = {w: {} for w in self.windows}
        self.keep_masks: dict[int, torch.Tensor] = {}
        self.queries: dict[int, torch.Tensor] = {}
        self.scaling = 1.0

    def observe(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
    ) -> torch.Tensor | None:
        """Record statistics of this layer's attention; return the mask the kernel should use."""
        if self.query_window is not None:
            self.queries[layer] = query[:, :, -self.query_window :]
            self.scaling = scaling
        if self.windows and (self.window_layers is None or layer in self.window_layers):
            widest = self.windows[-1]
            weights = _grouped_attention(query[:, :, -widest:], key, attention_mask, scaling)
            for window in self.windows:
                self.window_scores[window][layer] = weights[:, :, -window:].sum(dim=2)
        calibration = self.calibration
        if calibration is not None and layer in calibration.calibrator.layer_range:
            if layer not in self.keep_masks:
                weights = _grouped_attention(query, key, attention_mask, scaling)
                self.keep_masks[layer] = calibration.keep_mask(layer, weights.mean(dim=2))
            attention_mask = _apply_keep_mask(attention_mask, self.keep_masks[layer], query, key)
        return attention_mask


@dataclass
class Calibration:
    """A calibrator bound to the merged KV of one final pass: per calibrated layer, each merged
    entry's offset in its chunk's context and that chunk's length (rows, kv_heads, entries;
    offset -1 for the template prefix and padding)."""

    calibrator: Calibrator
    offsets: dict[int, torch.Tensor] = field(default_factory=dict)
    lengths: dict[int, torch.Tensor] = field(default_factory=dict)

    def keep_mask(self, layer: int, attention: torch.Tensor) -> torch.Tensor:
        """`attention` (rows, kv_heads, keys): mean attention of the queries. Returns a keep
        mask over the keys."""
        offsets = self.offsets[layer].to(attention.device)
        lengths = self.lengths[layer].to(attention.device)
        biased = self.calibrator.biased(attention, offsets, lengths)
        keep = torch.ones_like(attention, dtype=torch.bool)
        keep[..., : offsets.shape[-1]] = ~biased
        return keep


def _causal_rows(query_len: int, key_len: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(key_len - query_len, key_len, device=device)[:, None]
    return torch.arange(key_len, device=device)[None, :] <= rows


def _grouped_attention(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Softmax attention of `query` (b, heads, q, d) over `key` (b, kv_heads, k, d) in float32,
    averaged over the query heads of each KV group: (b, kv_heads, q, k)."""
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    grouped = query.float().view(batch, kv_heads, heads // kv_heads, q_len, dim)
    logits = torch.einsum("bhgqd,bhkd->bhgqk", grouped, key.float()) * scaling
    if attention_mask is not None and attention_mask.ndim == 2:
        padding = attention_mask.bool()[:, None, None, -k_len:]
        attention_mask = _causal_rows(q_len, k_len, query.device)[None, None] & padding
    if attention_mask is None:
        allowed = _causal_rows(q_len, k_len, query.device)[None, None, None]
        logits = logits.masked_fill(~allowed, float("-inf"))
    else:
        rows = attention_mask[:, :, -q_len:, -k_len:].unsqueeze(2)
        if rows.dtype == torch.bool:
            logits = logits.masked_fill(~rows, float("-inf"))
        else:
            logits = logits + rows.float()
    return torch.softmax(logits, dim=-1).nan_to_num(0.0).mean(dim=2)


def _apply_keep_mask(
    attention_mask: torch.Tensor | None,
    keep: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
) -> torch.Tensor:
    """Combine the model's mask with a per-KV-head keep mask (1, kv_heads, keys_then)."""
    heads, q_len, k_len = query.shape[1], query.shape[2], key.shape[2]
    kv_heads = key.shape[1]
    extended = torch.ones((keep.shape[0], kv_heads, k_len), dtype=torch.bool, device=key.device)
    extended[..., : keep.shape[-1]] = keep.to(key.device)
    per_head = extended.repeat_interleave(heads // kv_heads, dim=1)[:, :, None, :]
    if attention_mask is None:
        causal = _causal_rows(q_len, k_len, key.device)[None, None]
        return causal & per_head
    if attention_mask.dtype == torch.bool:
        return attention_mask[:, :, :, -k_len:] & per_head
    return attention_mask.masked_fill(~per_head, torch.finfo(attention_mask.dtype).min)


@contextlib.contextmanager
def active_probe(probe: AttentionProbe | None) -> Iterator[AttentionProbe | None]:
    """Make `probe` the one the hooked attention uses in this thread for the `with` block."""
    token = _ACTIVE_PROBE.set(probe)
    try:
        yield probe
    finally:
        _ACTIVE_PROBE.reset(token)


def _hooked(base: Callable, backends: list[SDPBackend] | None) -> Callable:
    """`base` under the active probe, choosing among `backends` on CUDA when given, for passes
    of several queries (not while `torch.compile` traces it)."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        probe = _ACTIVE_PROBE.get()
        if probe is not None:
            scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
            attention_mask = probe.observe(module.layer_idx, query, key, attention_mask, scaling)
        restricted = backends is not None and query.shape[2] > 1
        if not restricted or not query.is_cuda or torch.compiler.is_compiling():
            return base(module, query, key, value, attention_mask, **kwargs)
        with sdpa_kernel(backends):
            return base(module, query, key, value, attention_mask, **kwargs)

    return attention


def register_hooked_kernels() -> None:
    """Register `parallelcomp_<kernel>` for each supported transformers kernel (idempotent)."""
    for base in BASE_KERNELS:
        name = implementation_name(base)
        if name not in ALL_ATTENTION_FUNCTIONS._global_mapping:
            backends = SDPA_BACKENDS if base == "sdpa" else None
            AttentionInterface.register(name, _hooked(ALL_ATTENTION_FUNCTIONS[base], backends))
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
