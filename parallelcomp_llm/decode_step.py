"""One decoding step of a batch: the model over the cache, for each row's next token.

- `DynamicStep`: the cache grows by concatenation (`DynamicCache`), under the request's attention
  probe (calibration masks); it runs on any device with any setting.
- `StaticStep`: the merged KV is copied once into a `StaticCache` of fixed length (the merged KV
  plus the answer budget, rounded up to `LENGTH_BUCKET` entries), and each step writes its token in
  place under a fixed-shape mask. On CUDA, `StepGraphs` captures the step once per (rows, length)
  bucket as a CUDA graph and replays it: a token then costs one graph launch instead of hundreds
  of kernel launches, which is what bounds an eager decoding step. A compiled step
  (`decode_step="compiled"`) runs the model's forward as compiled by `torch.compile` (its small
  elementwise kernels fused: 752 kernels a step instead of 1751 for an 8B Llama), in a cache of
  `COMPILED_LENGTH_BUCKET` multiples, captured on CUDA as well.

Both take each row's next token and position and return the logits (rows, vocab).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, StaticCache
from transformers.cache_utils import Cache, DynamicCache, StaticLayer

from .attention import AttentionProbe
from .device import model_device, offloaded
from .errors import InvalidConfigError
from .kvcache import cache_argument, run_on_cache, tensors_of
from .tracing import StageTracer

LENGTH_BUCKET = 512
"""Static caches are sized in multiples of this many entries, so that requests share graphs."""
COMPILED_LENGTH_BUCKET = 2048
"""The same for compiled steps, coarser: each new size compiles the step again (11-18 s for an 8B
model on an H200), while masked entries cost little (the default reading and answer budget fit
one bucket)."""
KEPT_GRAPHS = 2
"""Captured steps an engine keeps (each holds its static cache), least recently used dropped."""

StepKind = Literal["dynamic", "static", "cuda_graph", "compiled"]
DecodeStepSetting = Literal["auto", "dynamic", "static", "cuda_graph", "compiled"]


def static_cache_fits(model: PreTrainedModel) -> bool:
    """Whether every layer of the model's static cache is a plain one (no sliding window, whose
    rolling buffer the step's fixed mask does not describe)."""
    layers = StaticCache(config=model.config, max_cache_len=LENGTH_BUCKET).layers
    return all(type(layer) is StaticLayer for layer in layers)


def resolve_step_kind(
    setting: DecodeStepSetting,
    devices: Sequence[torch.device],
    model: PreTrainedModel,
    calibrated: bool,
) -> StepKind:
    """The step an engine decodes with: `auto` captures CUDA graphs when the whole model is on
    one GPU (its `devices`; no weights offloaded), its cache can be static and no calibration
    masks apply, and grows the cache otherwise. `static`, `cuda_graph` and `compiled` are refused
    where they cannot run (`compiled` needs the whole model on one device, of any type)."""
    possible = static_cache_fits(model) and not calibrated
    one_device = len(devices) == 1 and not offloaded(model)
    one_gpu = one_device and devices[0].type == "cuda"
    if setting == "auto":
        return "cuda_graph" if possible and one_gpu else "dynamic"
    if setting != "dynamic" and not possible:
        raise InvalidConfigError(
            f"decode_step={setting!r} needs a model without sliding-window layers and no "
            "attention-bias calibration (calibration_layers=None)"
        )
    if setting == "cuda_graph" and not one_gpu:
        raise InvalidConfigError(
            "decode_step='cuda_graph' needs a CUDA device, with the whole model on it (not "
            "spread over several devices or offloaded by a device map)"
        )
    if setting == "compiled" and not one_device:
        raise InvalidConfigError(
            "decode_step='compiled' needs the whole model on one device (not spread over "
            "several devices or offloaded by a device map)"
        )
    return setting


def model_logits(model: PreTrainedModel, inputs: dict[str, Any]) -> torch.Tensor:
    """The logits of the last position of one forward pass of `model` over `inputs`."""
    return model(**inputs, use_cache=True, logits_to_keep=1).logits


@functools.cache
def compiled_model_logits() -> Callable[[PreTrainedModel, dict[str, Any]], torch.Tensor]:
    """`model_logits` compiled by `torch.compile` for fixed shapes (compiled at its first call
    for each model and shape)."""
    return torch.compile(model_logits, dynamic=False)


class DynamicStep:
    """A decoding step over a growing `DynamicCache`, with the padding mask grown by one column."""

    def __init__(
        self,
        model: PreTrainedModel,
        cache: Cache,
        attention_mask: torch.Tensor | None,
        probe: AttentionProbe | None,
    ) -> None:
        self.model = model
        self.cache = cache
        self.attention_mask = attention_mask
        self.probe = probe

    def __call__(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        mask = self.attention_mask
        if mask is not None:
            mask = self.attention_mask = torch.cat([mask, mask.new_ones((len(tokens), 1))], dim=1)
        device = model_device(self.model)
        return run_on_cache(
            self.model,
            torch.tensor([[token] for token in tokens], device=device),
            torch.tensor([[position] for position in positions], device=device),
            self.cache,
            mask,
            self.probe,
        )[:, -1]


class StaticSlot:
    """A static cache of `rows` x `length` entries with the step's input buffers, its padding
    mask, and the step's forward pass (run directly, or replayed from a captured graph; the
    model's forward compiled when `compiled`)."""

    def __init__(
        self, model: PreTrainedModel, rows: int, length: int, compiled: bool = False
    ) -> None:
        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        device = model_device(model)
        self.mask = torch.zeros((rows, length), dtype=torch.bool, device=device)
        self.write_index = torch.zeros(1, dtype=torch.long, device=device)
        self.input_ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.position_ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.inputs = {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": self.mask[:, None, None, :],
            cache_argument(model): self.cache,
        }
        self.run_model = compiled_model_logits() if compiled else model_logits
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def load(self, cache: DynamicCache, attention_mask: torch.Tensor | None) -> None:
        """Copy a batch's KV in (its entries first, then room for the answers) and reset the
        mask and the write position to it."""
        keys, values = tensors_of(cache)
        width = int(keys[0].shape[2])
        self.cache.reset()
        for layer, (layer_keys, layer_values) in enumerate(zip(keys, values, strict=True)):
            self.cache.update(layer_keys, layer_values, layer)
        self.mask.zero_()
        self.mask[:, :width] = True if attention_mask is None else attention_mask[:, :width].bool()
        self.write_index.fill_(width)

    def forward(self) -> torch.Tensor:
        """The model over the step's inputs: writes their KV at the write position, which it
        then moves on by one."""
        self.mask.index_fill_(1, self.write_index, True)
        logits = self.run_model(self.model, self.inputs)
        self.write_index.add_(1)
        return logits

    def capture(self, cache: DynamicCache, attention_mask: torch.Tensor | None) -> None:
        """Record the step as a CUDA graph (after warm-up passes on a side stream), then load
        the batch again, since warming up wrote to the slot."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.forward()
        torch.cuda.current_stream().wait_stream(side)
        self.load(cache, attention_mask)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.logits = self.forward()
        self.graph = graph
        self.load(cache, attention_mask)

    def run(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        self.input_ids.copy_(torch.tensor([[token] for token in tokens]), non_blocking=True)
        self.position_ids.copy_(torch.tensor([[p] for p in positions]), non_blocking=True)
        if self.graph is None:
            return self.forward()[:, -1]
        self.graph.replay()
        return self.logits[:, -1]


class StepGraphs:
    """An engine's captured decoding steps, by (rows, length) bucket; at most `KEPT_GRAPHS`.
    Each captures the model's compiled forward when `compiled`."""

    def __init__(self, compiled: bool = False) -> None:
        self.compiled = compiled
        self._slots: OrderedDict[tuple[int, int], StaticSlot] = OrderedDict()

    def slot(
        self,
        model: PreTrainedModel,
        cache: DynamicCache,
        attention_mask: torch.Tensor | None,
        length: int,
    ) -> StaticSlot:
        """A captured slot for this batch's shape, loaded with its KV (captured now if new)."""
        keys = tensors_of(cache)[0][0]
        key = (int(keys.shape[0]), length)
        slot = self._slots.pop(key, None)
        if slot is None:
            while len(self._slots) >= KEPT_GRAPHS:
                self._slots.popitem(last=False)
            slot = StaticSlot(model, key[0], length, self.compiled)
            slot.load(cache, attention_mask)
            slot.capture(cache, attention_mask)
        else:
            slot.load(cache, attention_mask)
        self._slots[key] = slot
        return slot


def static_length(cache: DynamicCache, max_new_tokens: int, bucket: int) -> int:
    """Entries of the static cache for a batch: its KV and the answers, rounded up to `bucket`."""
    width = int(tensors_of(cache)[0][0].shape[2])
    return -(-(width + max_new_tokens) // bucket) * bucket


class StaticStep:
    """A decoding step over a static cache (`StaticSlot`), replayed from a captured CUDA graph
    when `graphs` is given, the model's forward compiled when `compiled`. The slot is loaded (and
    captured or compiled, for a new shape) at the first step, after the first token is out,
    inside a `decode_setup` span."""

    def __init__(
        self,
        model: PreTrainedModel,
        cache: DynamicCache,
        attention_mask: torch.Tensor | None,
        max_new_tokens: int,
        graphs: StepGraphs | None,
        tracer: StageTracer,
        compiled: bool = False,
    ) -> None:
        self.model = model
        self.graphs = graphs
        self.tracer = tracer
        self.compiled = compiled
        self._batch: tuple[DynamicCache, torch.Tensor | None] | None = (cache, attention_mask)
        bucket = COMPILED_LENGTH_BUCKET if compiled else LENGTH_BUCKET
        self.length = static_length(cache, max_new_tokens, bucket)
        self.slot: StaticSlot | None = None

    def _loaded(self) -> StaticSlot:
        if self.slot is None and self._batch is not None:
            (cache, attention_mask), self._batch = self._batch, None
            with self.tracer.span("decode_setup"):
                if self.graphs is not None:
                    self.slot = self.graphs.slot(self.model, cache, attention_mask, self.length)
                else:
                    rows = int(tensors_of(cache)[0][0].shape[0])
                    self.slot = StaticSlot(self.model, rows, self.length, self.compiled)
                    self.slot.load(cache, attention_mask)
        return self.slot

    def __call__(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        return self._loaded().run(tokens, positions)


DecodeStep = DynamicStep | StaticStep
"""One decoding step of a batch: (next token, position) per row -> logits (rows, vocab)."""
