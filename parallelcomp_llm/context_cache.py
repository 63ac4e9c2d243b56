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
from .errors import InvalidInputError
from .prefill import EncodedBatch

_FORMAT = "parallelcomp-context-cache/3"


class ContextCacheMismatchError(InvalidInputError):
    """A context cache made for another model or other settings."""


def digest(*parts: object) -> str:
    """Hex sha256 of the JSON form of `parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def model_key(model: PreTrainedModel, plan: ChunkPlan, prefix_ids: list[int]) -> str:
    """The identity of a model and of the settings that shape its encoded chunks: its config, a
    sample of its weights, its dtype, the chunk plan and the prompt prefix."""
    parameters = list(model.parameters())
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
    after `prefix_ids` (the prompt template's prefix, with the system prompt if one was given)."""

    model_key: str
    context_key: str
    chunks: list[Chunk]
    context_tokens: int
    batches: list[EncodedBatch]
    prefix_ids: list[int]

    @property
    def nbytes(self) -> int:
        return sum(batch.nbytes for batch in self.batches)

    def check_made_for(self, model_key: str) -> None:
        """`ContextCacheMismatchError` unless the cache was made for `model_key`."""
        if self.model_key != model_key:
            raise ContextCacheMismatchError(
                "this context cache was made for another model or other chunking settings; "
                "encode the context again with this engine"
            )

    @property
    def device(self) -> torch.device:
        return self.batches[0].keys[0].device

    def to(self, device: torch.device) -> ContextCache:
        if self.device == device:
            return self
        batches = [batch.to(device) for batch in self.batches]
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
        if header.get("format") != _FORMAT:
            raise InvalidInputError(
                f"{str(path)!r} is not a parallelcomp context cache of this version "
                f"({_FORMAT}): encode the context again"
            )
        tensors = load_file(str(path), device=str(device))
        chunks = [
            Chunk(tensors[f"chunk{i}"].tolist(), [Span(*span) for span in spans])
            for i, spans in enumerate(header["spans"])
        ]
        batches = []
        for b, meta in enumerate(header["batches"]):
            layers = sum(1 for name in tensors if name.startswith(f"batch{b}.keys"))
            batches.append(
                EncodedBatch(
                    meta["chunk_indices"],
                    meta["lengths"],
                    [tensors[f"batch{b}.keys{i}"] for i in range(layers)],
                    [tensors[f"batch{b}.values{i}"] for i in range(layers)],
                )
            )
        return cls(
            header["model_key"],
            header["context_key"],
            chunks,
            header["context_tokens"],
            batches,
            header["prefix_ids"],
        )


class CacheStore:
    """Least-recently-used context caches within a device budget, then a host budget (bytes).

    Thread-safe: the engine's worker reads and fills it while callers load or clear caches.
    """

    def __init__(self, device: torch.device, device_budget: int, host_budget: int) -> None:
        self.device = device
        self.device_budget = device_budget if device.type != "cpu" else 0
        self.host_budget = host_budget
        self._device: OrderedDict[str, ContextCache] = OrderedDict()
        self._host: OrderedDict[str, ContextCache] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def capacity(self) -> int:
        return max(self.device_budget, self.host_budget)

    def get(self, key: str) -> ContextCache | None:
        """The cache for `key` on the engine's device, marked most recently used, or None."""
        with self._lock:
            cache = self._device.pop(key, None) or self._host.pop(key, None)
            if cache is None:
                return None
            self.put(cache)
        return cache.to(self.device)

    def put(self, cache: ContextCache) -> None:
        """Keep `cache` (if it fits a budget at all), evicting least recently used ones."""
        with self._lock:
            self._device.pop(cache.context_key, None)
            self._host.pop(cache.context_key, None)
            if cache.nbytes <= self.device_budget:
                self._device[cache.context_key] = cache.to(self.device)
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
