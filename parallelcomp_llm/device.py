"""Memory and timing on the model's device: free and total memory, peaks, synchronised clocks,
how many chunks fit one forward pass, and running out of memory as the package's own error."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator

import torch
from transformers import PreTrainedModel

from .errors import DeviceMemoryError

_CPU_MEMORY_SHARE = 0.5
_GPU_MEMORY_SHARE = 0.7
_MAX_AUTO_BATCH = 32
_TOKENS_PER_PASS = 32_768


def model_device(model: PreTrainedModel) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def start_measuring(device: torch.device) -> float:
    """Start of a measured request: reset the CUDA peak-memory counter; the current time."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return time.perf_counter()


def device_work_done(device: torch.device) -> float:
    """The time once the work queued on `device` has finished (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory(device: torch.device) -> int:
    """Peak memory in bytes: allocated on CUDA since `start_measuring`, else the process's peak
    resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_cached_memory(device: torch.device) -> None:
    """Return the CUDA allocator's unused cached blocks to the device."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_memory(device: torch.device) -> int:
    """Total memory of a CUDA device in bytes (0 for the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return 0


def host_memory() -> int:
    """Physical RAM in bytes."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def available_host_memory() -> int:
    """RAM available to new allocations in bytes (`MemAvailable`; 4 GiB when unknown)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


MEMORY_ERRORS = (torch.OutOfMemoryError, MemoryError, RuntimeError)
"""What running out of memory raises: on CUDA `torch.OutOfMemoryError`; on CPU torch's allocator
raises a plain `RuntimeError` (`out_of_memory` tells it from other ones)."""


def out_of_memory(error: BaseException) -> bool:
    """Whether `error`, one of `MEMORY_ERRORS`, says the device or host ran out of memory."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


@contextlib.contextmanager
def reporting_memory_errors(device: torch.device) -> Iterator[None]:
    """Turn running out of device (or, on CPU, host) memory into `DeviceMemoryError` after
    freeing what the work allocated."""
    try:
        yield
    except MEMORY_ERRORS as error:
        if not out_of_memory(error):
            raise
        release_cached_memory(device)
        raise DeviceMemoryError(
            "the device ran out of memory even with one chunk per forward pass; lower "
            "chunk_tokens, keep_chunks or kv_budget (or max_batch_requests), or "
            "use a larger device"
        ) from None


def kv_shape(model: PreTrainedModel) -> tuple[int, int, int]:
    """The model's KV layout: layers, KV heads, head dimension."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_key_value_heads, head_dim


def kv_bytes_per_token(model: PreTrainedModel) -> int:
    """Bytes of keys and values one token occupies over all layers."""
    layers, kv_heads, head_dim = kv_shape(model)
    return 2 * layers * kv_heads * head_dim * next(model.parameters()).element_size()


def auto_batch_size(model: PreTrainedModel, row_tokens: int, question_tokens: int) -> int:
    """Rows per forward pass: about `_TOKENS_PER_PASS` tokens, within a share of the free memory
    of the model's device.

    Rows of a few thousand tokens already fill the GPU's matrix units, so more rows per pass only
    cost memory (measured on an H100 with the 8B shape at 128K: 18 rows of 7.9K tokens ran no
    faster than 4 and peaked at 49 GiB against 27 GiB). A row costs its KV cache over all layers,
    one layer's activations (hidden states, MLP and attention outputs), and the question pass's
    logits.
    """
    config = model.config
    device = model_device(model)
    element = next(model.parameters()).element_size()
    activations = row_tokens * (4 * config.hidden_size + 3 * config.intermediate_size) * element
    logits = question_tokens * config.vocab_size * 4 * 2
    per_row = kv_bytes_per_token(model) * row_tokens + activations + logits
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] * _GPU_MEMORY_SHARE
    else:
        free = available_host_memory() * _CPU_MEMORY_SHARE
    by_tokens = max(1, _TOKENS_PER_PASS // row_tokens)
    return int(max(1, min(_MAX_AUTO_BATCH, by_tokens, free // per_row)))
