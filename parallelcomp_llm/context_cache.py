"""`ContextCache`: the question-independent prefill of a context, kept to answer many questions.

Chunks are encoded independently of the question, so their KV can be reused; only scoring,
eviction and decoding run per question. A cache records a `model_key` (the model's identity and
the settings that shape the KV) and is refused by an engine with another one. `CacheStore` keeps
recently used caches within a device budget, then a host budget, evicting the least recently used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from .chunking import Chunk, ChunkPlan, Span
from .device import Placement, per_layer
from .errors import InvalidInputError
from .prefill import EncodedBatch

_FORMAT = "parallelcomp-context-cache/3"


class ContextCacheMismatchError(InvalidInputError):
    """A context cache made for another model or other settings."""


def digest(*parts: object) -> str:
    """Hex sha256 of the JSON form of `parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def context_key(model_key: str, prefix_ids: list[int], chunks: list[Chunk]) -> str:
    """The identity of an encoded context: the model key, the chunk prefix, and every chunk's
    token ids and document spans (what a cache file holds, so a loaded file's key is recomputed,
    never trusted)."""
    layout = [(chunk.token_ids, [vars(span) for span in chunk.spans]) for chunk in chunks]
    return digest(model_key, list(prefix_ids), layout)


def model_key(model: PreTrainedModel, plan: ChunkPlan, prefix_ids: list[int]) -> str:
    """The identity of a model and of the settings that shape its encoded chunks: its config, a
    sample of its weights (of those not offloaded to the meta device), its dtype, the chunk plan
    and the prompt prefix."""
    parameters = [p for p in model.parameters() if p.device.type != "meta"]
    sample = [
        float(p.detach().flatten()[:4096].double().sum()) for p in (parameters[0], parameters[-1])
    ]
    return digest(
        model.config.to_json_string(),
        sample,
        str(parameters[0].dtype),
        plan.chunk_tokens,
        plan.one_chunk_room,
        prefix_ids,
        plan.separator_ids,
    )


@dataclass
class ContextCache:
    """Encoded chunks of one context, for one model and settings (`model_key`), each prefilled
    after `prefix_ids` (the prompt template's prefix, with the system prompt if one was given);
    each layer's KV on one device (its layer's, or the CPU). `engine.encode` keeps every layer;
    the engine's own store may keep the first layers only, all its scorer reads (`layers`)."""

    model_key: str
    context_key: str
    chunks: list[Chunk]
    context_tokens: int
    batches: list[EncodedBatch]
    prefix_ids: list[int]

    @property
    def nbytes(self) -> int:
        return sum(batch.nbytes for batch in self.batches)

    @property
    def layers(self) -> int:
        """How many of the model's layers, from the first, the cache holds the KV of."""
        return len(self.batches[0].keys)

    def check_made_for(self, model_key: str) -> None:
        """`ContextCacheMismatchError` unless the cache was made for `model_key`."""
        if self.model_key != model_key:
            raise ContextCacheMismatchError(
                "this context cache was made for another model or other chunking settings; "
                "encode the context again with this engine"
            )

    @property
    def devices(self) -> list[torch.device]:
        """Each layer's device."""
        return [keys.device for keys in self.batches[0].keys]

    def to(self, devices: Placement) -> ContextCache:
        """This cache with each layer's KV on `devices` (one per layer, or one for all)."""
        devices = per_layer(devices, len(self.batches[0].keys))
        if self.devices == devices:
            return self
        batches = [batch.to(devices) for batch in self.batches]
        return dataclasses.replace(self, batches=batches)

    def save(self, path: str | Path) -> None:
        """Write the cache to one safetensors file."""
        tensors: dict[str, torch.Tensor] = {}
        for b, batch in enumerate(self.batches):
            for layer, (keys, values) in enumerate(zip(batch.keys, batch.values)):
                tensors[f"batch{b}.keys{layer}"] = keys.contiguous().cpu()
                tensors[f"batch{b}.values{layer}"] = values.contiguous().cpu()
        for index, chunk in enumerate(self.chunks):
            tensors[f"chunk{index}"] = torch.tensor(chunk.token_ids, dtype=torch.int64)
        header = {
            "format": _FORMAT,
            "model_key": self.model_key,
            "context_key": self.context_key,
            "context_tokens": self.context_tokens,
            "prefix_ids": self.prefix_ids,
            "spans": [[list(vars(span).values()) for span in chunk.spans] for chunk in self.chunks],
            "batches": [
                {"chunk_indices": b.chunk_indices, "lengths": b.lengths} for b in self.batches
            ],
        }
        save_file(tensors, str(path), metadata={"parallelcomp": json.dumps(header)})

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> ContextCache:
        """Read a cache written by `save`."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = json.loads((handle.metadata() or {}).get("parallelcomp", "{}"))
        except (OSError, ValueError, SafetensorError) as error:
            raise InvalidInputError(f"cannot read context cache {str(path)!r}: {error}") from None
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise InvalidInputError(
                f"{str(path)!r} is not a parallelcomp context cache of this version "
                f"({_FORMAT}): encode the context again"
            )
        try:
            tensors = load_file(str(path), device=str(device))
            return _checked(header, tensors)
        except (KeyError, TypeError, ValueError, IndexError, SafetensorError) as error:
            raise InvalidInputError(
                f"context cache {str(path)!r} is corrupt or was altered: {error}"
            ) from None

    def check_fits(self, layers: int, kv_heads: int, head_dim: int, max_tokens: int) -> None:
        """`InvalidInputError` unless the KV has the shape of a model of `layers` layers and
        `kv_heads` x `head_dim` keys, and the context at most `max_tokens` tokens."""
        if self.context_tokens > max_tokens:
            raise InvalidInputError(
                f"the cached context has {self.context_tokens} tokens, more than "
                f"max_context_tokens={max_tokens}"
            )
        for batch in self.batches:
            shapes = {tuple(t.shape[1:2]) + tuple(t.shape[3:]) for t in batch.keys + batch.values}
            if len(batch.keys) != layers or shapes != {(kv_heads, head_dim)}:
                raise InvalidInputError(
                    "the cached KV does not have this model's shape: the file is corrupt"
                )


def _checked(header: dict, tensors: dict[str, torch.Tensor]) -> ContextCache:
    """The cache a file holds, each part checked: `ValueError` (or the `KeyError`, `TypeError`,
    `IndexError` of a missing or mistyped part) for anything inconsistent."""
    prefix_ids = [int(i) for i in header["prefix_ids"]]
    chunks = []
    for index, spans in enumerate(header["spans"]):
        ids = tensors[f"chunk{index}"]
        if ids.dtype != torch.int64 or ids.dim() != 1 or bool((ids < 0).any()):
            raise ValueError(f"chunk {index} is not a list of token ids")
        chunk = Chunk(ids.tolist(), [Span(*(int(v) for v in span)) for span in spans])
        if not chunk.spans or any(
            not 0 <= sp.offset <= sp.offset + sp.end - sp.start <= len(chunk) for sp in chunk.spans
        ):
            raise ValueError(f"chunk {index} has spans outside it")
        chunks.append(chunk)
    batches, seen = [], []
    for b, meta in enumerate(header["batches"]):
        indices, lengths = (
            [int(i) for i in meta["chunk_indices"]],
            [int(n) for n in meta["lengths"]],
        )
        layers = sum(1 for name in tensors if name.startswith(f"batch{b}.keys"))
        keys = [tensors[f"batch{b}.keys{i}"] for i in range(layers)]
        values = [tensors[f"batch{b}.values{i}"] for i in range(layers)]
        shape = tuple(keys[0].shape)
        if (
            len(shape) != 4
            or shape[0] != len(indices)
            or len(lengths) != len(indices)
            or any(tuple(t.shape) != shape or not t.dtype.is_floating_point for t in keys + values)
            or any(
                length != len(prefix_ids) + len(chunks[i]) for i, length in zip(indices, lengths)
            )
            or max(lengths) > shape[2]
        ):
            raise ValueError(f"batch {b} does not match its chunks")
        if not all(bool(torch.isfinite(t).all()) for t in keys + values):
            raise ValueError(f"batch {b} holds values that are not finite")
        seen += indices
        batches.append(EncodedBatch(indices, lengths, keys, values))
    if seen != list(range(len(chunks))):
        raise ValueError("the batches do not hold every chunk once, in order")
    tokens = sum(len(chunk) for chunk in chunks)
    if int(header["context_tokens"]) != tokens:
        raise ValueError("its token count does not match its chunks")
    model = str(header["model_key"])
    return ContextCache(
        model, context_key(model, prefix_ids, chunks), chunks, tokens, batches, prefix_ids
    )


class CacheStore:
    """Least-recently-used context caches within a device budget, then a host budget (bytes).

    The device tier keeps each layer's KV on `devices` (the layer's device; one device for all
    layers); it is off when they are all the CPU. Thread-safe: the engine's worker reads and
    fills it while callers load or clear caches.
    """

    def __init__(
        self,
        devices: Placement,
        device_budget: int,
        host_budget: int,
    ) -> None:
        self.devices = devices
        named = [devices] if isinstance(devices, torch.device) else list(devices)
        self.device_budget = device_budget if any(d.type != "cpu" for d in named) else 0
        self.host_budget = host_budget
        self._device: OrderedDict[str, ContextCache] = OrderedDict()
        self._host: OrderedDict[str, ContextCache] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def capacity(self) -> int:
        return max(self.device_budget, self.host_budget)

    def get(self, key: str) -> ContextCache | None:
        """The cache for `key` on the engine's devices, marked most recently used, or None."""
        with self._lock:
            cache = self._device.pop(key, None) or self._host.pop(key, None)
            if cache is None:
                return None
            self.put(cache)
        return cache.to(self.devices)

    def put(self, cache: ContextCache) -> None:
        """Keep `cache` (if it fits a budget at all), evicting least recently used ones."""
        with self._lock:
            self._device.pop(cache.context_key, None)
            self._host.pop(cache.context_key, None)
            if cache.nbytes <= self.device_budget:
                self._device[cache.context_key] = cache.to(self.devices)
                self._shrink(self._device, self.device_budget, demote=True)
            elif cache.nbytes <= self.host_budget:
                self._host[cache.context_key] = cache.to(torch.device("cpu"))
                self._shrink(self._host, self.host_budget, demote=False)

    def clear(self) -> None:
        with self._lock:
            self._device.clear()
            self._host.clear()

    def _shrink(self, tier: OrderedDict[str, ContextCache], budget: int, demote: bool) -> None:
        while sum(cache.nbytes for cache in tier.values()) > budget:
            _, oldest = tier.popitem(last=False)
            if demote and oldest.nbytes <= self.host_budget:
                self._host[oldest.context_key] = oldest.to(torch.device("cpu"))
                self._shrink(self._host, self.host_budget, demote=False)

    @property
    def keys(self) -> list[str]:
        """Keys held, least recently used first (device tier, then host tier)."""
        with self._lock:
            return [*self._host, *self._device]
