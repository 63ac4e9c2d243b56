"""The baselines: plain transformers full attention over the whole prompt, then a greedy decode
loop over a `DynamicCache` that takes each token to the host (as `generate` does); transformers'
own `generate` with its static cache and compiled decoding step (the decode anchor); and the wall
time of one eager decode step against its GPU kernel time."""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache
from transformers.generation.streamers import BaseStreamer

from parallelcomp_llm.device import device_work_done, start_measuring
from parallelcomp_llm.kvcache import run_on_cache

from .measure import Events, free_memory, peak_bytes
from .shapes import prefill_flops


@torch.inference_mode()
def run_full(
    model, kernel: str, prompt_ids: list[int], new_tokens: int, facts: dict, device
) -> dict:
    """One request with full attention over `prompt_ids` and exactly `new_tokens` tokens."""
    model.set_attn_implementation(kernel)
    free_memory(device)
    start_measuring(device)
    events = Events(device)
    started = time.perf_counter()
    events.mark("prefill:start")
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    cache = DynamicCache()
    logits = run_on_cache(model, input_ids, None, cache, logits_to_keep=1)
    events.mark("prefill:end")
    token = int(logits[0, -1].argmax())
    first = time.perf_counter()
    del logits
    produced = [token]
    position = len(prompt_ids)
    for _ in range(new_tokens - 1):
        logits = run_on_cache(
            model,
            torch.tensor([[token]], device=device),
            torch.tensor([[position]], device=device),
            cache,
        )
        token = int(logits[0, -1].argmax())
        produced.append(token)
        position += 1
    last = time.perf_counter()
    peak = peak_bytes(device)
    del cache, logits
    spans = events.spans()
    flops = prefill_flops(facts, [len(prompt_ids)])
    kv_entries = len(prompt_ids) + new_tokens / 2
    return {
        "ttft_s": first - started,
        "prefill_s": first - started,
        "prefill_gpu_s": spans.get("prefill"),
        "decode_s": last - first,
        "new_tokens": len(produced),
        "decode_tok_s": (len(produced) - 1) / (last - first) if last > first else None,
        "total_s": last - started,
        "peak_memory_bytes": peak,
        "prefill_flops": flops,
        "prefill_tflops": flops / spans["prefill"] / 1e12 if spans.get("prefill") else None,
        "decode_mean_kv_entries": kv_entries,
        "decode_bytes_per_token": facts["decode_weight_bytes"]
        + kv_entries * facts["kv_bytes_per_token"],
    }


class _TokenClock(BaseStreamer):
    """Host time at which `generate` hands out each new token (the prompt's ids come first)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


@torch.inference_mode()
def run_static_generate(model, prompt_ids: list[int], new_tokens: int, facts: dict, device) -> dict:
    """transformers' `generate(cache_implementation="static")` over `prompt_ids` (sdpa, greedy,
    exactly `new_tokens` tokens): its decoding step is compiled (torch.compile, CUDA graphs) on
    the first call of each shape, so a warm-up call must come first."""
    model.set_attn_implementation("sdpa")
    free_memory(device)
    start_measuring(device)
    clock = _TokenClock()
    started = time.perf_counter()
    output = model.generate(
        torch.tensor([prompt_ids], dtype=torch.long, device=device),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        cache_implementation="static",
        streamer=clock,
        pad_token_id=0,
    )
    last = time.perf_counter()
    produced = int(output.shape[1]) - len(prompt_ids)
    first = clock.times[0]
    kv_entries = len(prompt_ids) + new_tokens / 2
    return {
        "ttft_s": first - started,
        "prefill_s": first - started,
        "decode_s": last - first,
        "new_tokens": produced,
        "decode_tok_s": (produced - 1) / (last - first) if last > first else None,
        "total_s": last - started,
        "peak_memory_bytes": peak_bytes(device),
        "decode_mean_kv_entries": kv_entries,
        "decode_bytes_per_token": facts["decode_weight_bytes"]
        + kv_entries * facts["kv_bytes_per_token"],
    }


@torch.inference_mode()
def decode_busy(model, facts: dict, kv_tokens: int, steps: int, device, bandwidth_gbps) -> dict:
    """Wall time vs GPU kernel time of one eager decode step over a cache of `kv_tokens`.

    The gap is host-side launch overhead (Python + transformers per layer), which a static cache
    with CUDA graphs (or torch.compile) would remove.
    """
    from torch.profiler import ProfilerActivity, profile

    model.set_attn_implementation("sdpa")
    free_memory(device)
    ids = torch.randint(0, 256, (1, kv_tokens), device=device)
    cache = DynamicCache()
    token = int(run_on_cache(model, ids, None, cache, logits_to_keep=1)[0, -1].argmax())
    position = kv_tokens

    def step(token, position, cache):
        input_ids = torch.tensor([[token]], device=device)
        positions = torch.tensor([[position]], device=device)
        return int(run_on_cache(model, input_ids, positions, cache)[0, -1].argmax())

    for _ in range(3):
        token = step(token, position, cache)
        position += 1
    device_work_done(device)
    begin = time.perf_counter()
    for _ in range(steps):
        token = step(token, position, cache)
        position += 1
    wall = (time.perf_counter() - begin) / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            token = step(token, position, cache)
            position += 1
        device_work_done(device)
    # Sum of self device time over key_averages rows. NB: it counts each kernel twice (under the
    # aten op that launched it and as its own kernel row) plus pseudo rows; kept as recorded in
    # the first results. `kernel_us` below sums device-side events once.
    busy_us = 0.0
    for item in prof.key_averages():
        value = getattr(item, "self_device_time_total", None)
        busy_us += value if value is not None else getattr(item, "self_cuda_time_total", 0)
    kernel_us = 0.0
    for event in prof.events():
        if str(getattr(event, "device_type", "")).endswith("CUDA") and not event.name.startswith(
            ("Command Buffer", "Lazy Function")
        ):
            kernel_us += getattr(event, "device_time", None) or getattr(event, "cuda_time", 0) or 0
    kv_mean = kv_tokens + 3 + 1.5 * steps
    floor_bytes = facts["decode_weight_bytes"] + kv_mean * facts["kv_bytes_per_token"]
    floor = floor_bytes / (bandwidth_gbps * 1e9) if bandwidth_gbps else None
    del cache
    free_memory(device)
    return {
        "kv_tokens": kv_tokens,
        "steps": steps,
        "wall_ms_per_token": wall * 1e3,
        "gpu_kernel_ms_per_token": busy_us / 1e3 / steps,  # double-counted sum, see above
        "gpu_kernel_events_ms_per_token": kernel_us / 1e3 / steps,
        "floor_ms_per_token": floor * 1e3 if floor else None,
        "bytes_per_token": floor_bytes,
    }
