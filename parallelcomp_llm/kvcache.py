"""Wrapping stored key/value tensors in a transformers `DynamicCache` without copying them."""

from __future__ import annotations

import torch
from transformers import DynamicCache


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
