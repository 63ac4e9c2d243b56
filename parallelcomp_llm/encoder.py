"""The parallel prefill of a context: its chunks encoded in batches of rows (through the model's
first layers only, when nothing reads the others), or taken from a kept encoding
(`ContextCache`), with fewer rows per pass when the device runs out of memory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .context_cache import CacheStore, ContextCache
from .device import (
    MEMORY_ERRORS,
    auto_batch_size,
    kv_bytes_per_token,
    layer_devices,
    model_devices,
    out_of_memory,
    release_cached_memory,
)
from .prefill import EncodedBatch, prefill_rows
from .requests import Encoding
from .tracing import StageTracer


@dataclass
class PrefillCount:
    """How a context's chunks were had: from a kept encoding, and how many were prefilled."""

    cache_hit: bool = False
    chunks: int = 0


class ChunkEncoder:
    """Encodes the chunks of a context in batches of rows, or takes them from a kept encoding.

    Newly encoded batches are offered to the engine's `CacheStore` when the context fits its
    budget (on the device if it fits the device share, else in host memory). An `explicit`
    encoding (`engine.encode`) stays on the device for its caller and goes to the store only if it
    fits the device share. A batch that runs out of device memory is retried with half as many
    chunks.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        pad_id: int,
        batch_size: int | None,
        question_tokens: int,
        store: CacheStore,
        model_key: str,
        tracer: StageTracer,
    ) -> None:
        self.model = model
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.question_tokens = question_tokens
        self.store = store
        self.model_key = model_key
        self.tracer = tracer

    def rows_per_batch(self, encoding: Encoding) -> int:
        """Chunks per forward pass for `encoding`: `chunk_batch_size`, else as many as the free
        memory of the model's device takes."""
        row_tokens = len(encoding.prefix_ids) + max(len(chunk) for chunk in encoding.chunks)
        return self.batch_size or auto_batch_size(
            self.model, row_tokens + self.question_tokens, self.question_tokens
        )

    def plan(self, encoding: Encoding) -> list[list[int]] | None:
        """The chunk indices of each batch `batches` would prefill (before any retry with fewer
        chunks), or None when the encoding is kept (a `ContextCache`, given or in the store)."""
        if encoding.cache is not None or encoding.context_key in self.store.keys:
            return None
        size, count = self.rows_per_batch(encoding), len(encoding.chunks)
        return [list(range(first, min(first + size, count))) for first in range(0, count, size)]

    def prefill(
        self, encoding: Encoding, indices: list[int], layers: int | None = None
    ) -> EncodedBatch:
        """One forward pass over the chunks `indices` of `encoding`, each after its prefix,
        through the model's first `layers` decoder layers (None: all)."""
        rows = [encoding.prefix_ids + encoding.chunks[i].token_ids for i in indices]
        with self.tracer.span("chunk_prefill"):
            return prefill_rows(self.model, rows, self.pad_id, indices, layers)

    def batches(
        self,
        encoding: Encoding,
        count: PrefillCount,
        progress: bool,
        explicit: bool = False,
        depth: int | None = None,
    ) -> Iterator[EncodedBatch]:
        """The context's encoded batches, in chunk order, with the KV of the model's first
        `depth` layers at least (None: all; an `explicit` encoding has all); `count` says how
        they were had. A kept encoding with fewer layers is encoded again."""
        layers = layer_devices(self.model)
        depth = None if explicit else depth
        cache = encoding.cache or self.store.get(encoding.context_key)
        if cache is not None and cache.layers >= (depth or len(layers)):
            count.cache_hit = True
            yield from cache.to(layers).batches
            return
        chunks, prefix = encoding.chunks, encoding.prefix_ids
        row_tokens = len(prefix) + max(len(chunk) for chunk in chunks)
        batch_size = self.rows_per_batch(encoding)
        estimate = kv_bytes_per_token(self.model) * row_tokens * len(chunks)
        fits_device = estimate <= self.store.device_budget
        store = estimate <= self.store.capacity and (fits_device or not explicit)
        keep = store or explicit
        holder = layers if explicit or fits_device else torch.device("cpu")
        kept: list[EncodedBatch] = []
        bar = tqdm(total=len(chunks), desc="prefill", unit="chunk", disable=not progress)
        first = 0
        while first < len(chunks):
            indices = list(range(first, min(first + batch_size, len(chunks))))
            try:
                batch = self.prefill(encoding, indices, depth)
            except MEMORY_ERRORS as error:
                if batch_size == 1 or not out_of_memory(error):
                    raise
                batch_size //= 2
                release_cached_memory(*model_devices(self.model))
                continue
            first += len(indices)
            count.chunks += len(indices)
            yield batch
            if keep:
                kept.append(batch.to(holder))
            bar.update(len(indices))
        bar.close()
        if store:
            self.store.put(
                ContextCache(
                    self.model_key,
                    encoding.context_key,
                    chunks,
                    encoding.context_tokens,
                    kept,
                    encoding.prefix_ids,
                )
            )
