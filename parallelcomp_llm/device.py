"""Where a model runs, and memory and timing there: the device its inputs go to and each decoder
layer's device (a model sharded with a `device_map` spans several; each layer's KV lives on its
layer's), free and total memory, peaks, synchronised clocks, how many chunks fit one forward pass,
and running out of memory as the package's own error."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedModel

from .errors import DeviceMemoryError

_CPU_MEMORY_SHARE = 0.5
_GPU_MEMORY_SHARE = 0.7
_MAX_AUTO_BATCH = 32
_TOKENS_PER_PASS = 32_768


def execution_device(module: torch.nn.Module, model: PreTrainedModel) -> torch.device:
    """Where `module`, a part of `model`, runs: the device of its first parameter, or, when
    accelerate offloads its weights (they wait on the meta device and come in for each pass),
    the model's main device, that of accelerate's hook on the model."""
    device = next(module.parameters()).device
    if device.type == "meta":
        hook = getattr(model, "_hf_hook", None)
        return torch.device(getattr(hook, "execution_device", device))
    return device


def model_device(model: PreTrainedModel) -> torch.device:
    """The device the model's inputs go to: where its input embeddings run."""
    return execution_device(model.get_input_embeddings(), model)


def layer_devices(model: PreTrainedModel) -> list[torch.device]:
    """Each decoder layer's device: where the layer runs, and so where its KV lives."""
    return [execution_device(layer, model) for layer in model.get_decoder().layers]


def model_devices(model: PreTrainedModel) -> tuple[torch.device, ...]:
    """The distinct devices the model runs on: its inputs', its layers', its output head's."""
    devices = [model_device(model), *layer_devices(model)]
    head = model.get_output_embeddings()
    if head is not None:
        devices.append(execution_device(head, model))
    return tuple(dict.fromkeys(devices))


def offloaded(model: PreTrainedModel) -> bool:
    """Whether accelerate offloads some of the model's weights (kept on the meta device and
    brought in for each pass)."""
    return any(parameter.device.type == "meta" for parameter in model.parameters())


Placement = torch.device | Sequence[torch.device]
"""Where tensors kept per layer go: one device for every layer, or a device per layer."""


def per_layer(devices: Placement, layers: int) -> list[torch.device]:
    """`devices` as a device for each of the first `layers` layers (KV of the model's first
    layers only takes the first devices of a model's list)."""
    if isinstance(devices, torch.device):
        return [devices] * layers
    if len(devices) < layers:
        raise ValueError(f"{len(devices)} devices given for {layers} layers")
    return list(devices[:layers])


def placed(tensors: list[torch.Tensor], devices: Placement) -> list[torch.Tensor]:
    """`tensors`, one per layer, each moved to its layer's device among `devices`."""
    return [t.to(device) for t, device in zip(tensors, per_layer(devices, len(tensors)))]


def _cuda(devices: Sequence[torch.device]) -> list[torch.device]:
    return [device for device in dict.fromkeys(devices) if device.type == "cuda"]


def start_measuring(*devices: torch.device) -> float:
    """Start of a measured request: reset the peak-memory counter of each CUDA device among
    `devices`; the current time."""
    for device in _cuda(devices):
        torch.cuda.reset_peak_memory_stats(device)
    return time.perf_counter()


def device_work_done(*devices: torch.device) -> float:
    """The time once the work queued on `devices` has finished (CUDA runs asynchronously)."""
    for device in _cuda(devices):
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory(*devices: torch.device) -> int:
    """Peak memory in bytes: allocated on the CUDA devices among `devices` since
    `start_measuring`, each device's peak summed (at least their joint peak, since the devices
    may peak at different times); with no CUDA device, the process's peak resident set size."""
    cuda = _cuda(devices)
    if cuda:
        return sum(int(torch.cuda.max_memory_allocated(device)) for device in cuda)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_cached_memory(*devices: torch.device) -> None:
    """Return the CUDA allocator's unused cached blocks to the devices."""
    if _cuda(devices):
        torch.cuda.empty_cache()


def device_memory(*devices: torch.device) -> int:
    """Total memory of the CUDA devices among `devices` in bytes, summed (0 for the CPU)."""
    return sum(int(torch.cuda.get_device_properties(d).total_memory) for d in _cuda(devices))


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
def reporting_memory_errors(*devices: torch.device) -> Iterator[None]:
    """Turn running out of device (or, on CPU, host) memory into `DeviceMemoryError` after
    freeing what the work allocated on `devices`."""
    try:
        yield
    except MEMORY_ERRORS as error:
        if not out_of_memory(error):
            raise
        release_cached_memory(*devices)
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
    of the model's devices (summed, when its layers are spread over several).

    Rows of a few thousand tokens already fill the GPU's matrix units, so more rows per pass only
    cost memory (measured on an H100 with the 8B shape at 128K: 18 rows of 7.9K tokens ran no
    faster than 4 and peaked at 49 GiB against 27 GiB). A row costs its KV cache over all layers,
    one layer's activations (hidden states, MLP and attention outputs), and the question pass's
    logits.
    """
    config = model.config
    element = next(model.parameters()).element_size()
    activations = row_tokens * (4 * config.hidden_size + 3 * config.intermediate_size) * element
    logits = question_tokens * config.vocab_size * 4 * 2
    per_row = kv_bytes_per_token(model) * row_tokens + activations + logits
    free = sum(_free_memory(device) for device in model_devices(model))
    by_tokens = max(1, _TOKENS_PER_PASS // row_tokens)
    return int(max(1, min(_MAX_AUTO_BATCH, by_tokens, free // per_row)))


def _free_memory(device: torch.device) -> float:
    """The share of `device`'s free memory a forward pass may take."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] * _GPU_MEMORY_SHARE
    return available_host_memory() * _CPU_MEMORY_SHARE
