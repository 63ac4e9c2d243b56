"""Running the model over a KV cache: wrapping stored tensors in a `DynamicCache` without copying
them, and one forward pass over a cache under an attention probe.

This is the one place that passes a cache to the model, and that stops a pass after its first
layers when nothing later is read (the cache then holds those layers only). transformers 5.24
renamed the forward argument `past_key_values` to `cache` (the old name warns, and goes in 5.40);
5.17 to 5.23 know only `past_key_values`. The name is read from the model's own forward
signature.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache

from .attention import AttentionProbe, active_probe


@functools.cache
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model: PreTrainedModel) -> str:
    """The name under which `model.forward` takes a KV cache in this transformers version."""
    return _cache_argument(type(model))


def cache_from_tensors(keys: list[torch.Tensor], values: list[torch.Tensor]) -> DynamicCache:
    """A cache whose layer `i` holds `keys[i]` and `values[i]` (batch, kv_heads, tokens, dim).

    The tensors are used as they are; the model's later updates concatenate into new tensors, so
    the ones passed in are never modified.
    """
    cache = DynamicCache()
    for layer, (layer_keys, layer_values) in enumerate(zip(keys, values)):
        cache.update(layer_keys[..., :0, :], layer_values[..., :0, :], layer)
        cache.layers[layer].keys = layer_keys
        cache.layers[layer].values = layer_values
    return cache


def tensors_of(cache: DynamicCache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The per-layer key and value tensors a cache holds."""
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


class _LayersDone(Exception):
    """Raised after the last decoder layer a pass needs, to end the pass there."""


@contextmanager
def _stopping_after(model: PreTrainedModel, layers: int | None) -> Iterator[None]:
    """End the model's forward passes inside the block after their first `layers` decoder layers
    (None, or every layer: run them all)."""
    decoder_layers = model.get_decoder().layers
    if layers is None or layers >= len(decoder_layers):
        yield
        return

    def done(module: torch.nn.Module, args: object, output: object) -> None:
        raise _LayersDone

    handle = decoder_layers[layers - 1].register_forward_hook(done)
    try:
        yield
    except _LayersDone:
        pass
    finally:
        handle.remove()


def run_on_cache(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    cache: Cache,
    attention_mask: torch.Tensor | None = None,
    probe: AttentionProbe | None = None,
    logits_to_keep: int = 0,
    layers: int | None = None,
) -> torch.Tensor | None:
    """Feed `input_ids` at `position_ids` after what `cache` holds (the cache grows); return the
    logits (all positions, or the last `logits_to_keep`). `position_ids` None: the positions
    after the cache's entries, as transformers counts them. With `layers` fewer than the model's,
    the pass ends after its first `layers` decoder layers: only they add to the cache, and there
    are no logits (None)."""
    logits = None
    with active_probe(probe), _stopping_after(model, layers):
        output = model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **{cache_argument(model): cache},
        )
        logits = output.logits
    return logits
