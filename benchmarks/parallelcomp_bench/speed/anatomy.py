"""Where a request's fixed costs go, on the GPU: the decoding step and the attention kernel choice.

1. Decoding step, over a static cache of `--static-length` entries (the size the engine decodes
   over), batch 1: the GPU time of one captured step (CUDA events around back-to-back graph
   replays), the wall time per token when each token is read back to the host (the engine's
   pattern), the eager step's kernel count (torch.profiler), and the same for the model's forward
   compiled by `torch.compile` (inductor, no CUDA graphs of its own) and captured in our graph,
   with its compile time.
2. Time to first token by stage for the default engine at `--lengths`, with SDPA's cuDNN backend
   allowed (torch's choice) and disallowed (flash and memory-efficient kernels only), side by side.

    python -m parallelcomp_bench.speed.anatomy --model llama3-8b-shape --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import DynamicCache

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.decode_step import StaticSlot
from parallelcomp_llm.device import device_work_done
from parallelcomp_llm.kvcache import run_on_cache
from parallelcomp_llm.testing import text_of_tokens, tiny_tokenizer

from ..records import provenance
from .measure import free_memory, measure_ceilings, result_path
from .run import NO_REUSE, run_parallelcomp
from .shapes import build_model, model_facts, parse_length
from .stage_timer import StageTimer


def kernel_count(step, device) -> int:
    """CUDA kernels one call of `step` launches."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        device_work_done(device)
    return sum(1 for event in prof.events() if str(event.device_type).endswith("CUDA"))


def time_slot(slot: StaticSlot, steps: int, device) -> dict:
    """GPU ms per graph replay (back to back), and wall ms per token read back each step."""
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    slot.graph.replay()
    device_work_done(device)
    begin.record()
    for _ in range(steps):
        slot.graph.replay()
    end.record()
    device_work_done(device)
    replay_ms = begin.elapsed_time(end) / steps
    token = 0
    started = time.perf_counter()
    for position in range(steps):
        logits = slot.run([token], [4000 + position])
        token = int(logits[0].argmax())
    wall_ms = (time.perf_counter() - started) / steps * 1e3
    return {
        "graph_replay_gpu_ms": replay_ms,
        "read_back_each_token_wall_ms": wall_ms,
        "token_fed_on_device_wall_ms": fed_on_device_ms(slot, steps, device),
    }


def fed_on_device_ms(slot: StaticSlot, steps: int, device) -> float:
    """Wall ms per token when the step picks its greedy token and feeds it to the next step on the
    device (one graph: forward, argmax, next inputs), the tokens read back every 16 steps."""

    def step() -> torch.Tensor:
        token = slot.forward()[:, -1].argmax(dim=-1, keepdim=True)
        slot.input_ids.copy_(token)
        slot.position_ids.add_(1)
        return token

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        token = step()
    slot.write_index.fill_(slot.write_index.item() - steps - 4)
    device_work_done(device)
    host = torch.empty((steps, 1), dtype=torch.long, pin_memory=True)
    tokens = torch.empty((steps, 1), dtype=torch.long, device=device)
    started = time.perf_counter()
    for index in range(steps):
        graph.replay()
        tokens[index].copy_(token[0])
        if index % 16 == 15:
            host[index - 15 : index + 1].copy_(tokens[index - 15 : index + 1], non_blocking=True)
            torch.cuda.current_stream().synchronize()
    device_work_done(device)
    return (time.perf_counter() - started) / steps * 1e3


@torch.inference_mode()
def decode_anatomy(model, width: int, length: int, steps: int, device) -> dict:
    free_memory(device)
    ids = torch.randint(0, 256, (1, width), device=device)
    cache = DynamicCache()
    run_on_cache(model, ids, None, cache, logits_to_keep=1)
    result: dict = {"kv_width": width, "static_length": length, "steps": steps}

    eager = StaticSlot(model, 1, length)
    eager.load(cache, None)
    eager.forward()
    result["eager_kernels_per_step"] = kernel_count(eager.forward, device)
    eager.capture(cache, None)
    result["captured"] = time_slot(eager, steps, device)
    del eager
    free_memory(device)

    original = model.forward
    model.forward = torch.compile(original, dynamic=False)
    try:
        compiled = StaticSlot(model, 1, length)
        compiled.load(cache, None)
        started = time.perf_counter()
        compiled.forward()
        device_work_done(device)
        result["compile_s"] = time.perf_counter() - started
        result["compiled_kernels_per_step"] = kernel_count(compiled.forward, device)
        started = time.perf_counter()
        compiled.capture(cache, None)
        result["compiled_capture_s"] = time.perf_counter() - started
        result["compiled_captured"] = time_slot(compiled, steps, device)
        del compiled
    except Exception as error:  # noqa: BLE001 - recorded: the compiled path is a probe here
        result["compiled_error"] = f"{type(error).__name__}: {error}"[:800]
    finally:
        model.forward = original
    free_memory(device)
    return result


def ttft_by_backend(model, device, lengths, repeats, facts) -> list[dict]:
    tokenizer = tiny_tokenizer()
    timer = StageTimer(model, device)
    engine = ParallelCompEngine(model, tokenizer, ParallelCompConfig(**NO_REUSE), observer=timer)
    rows = []
    for length in lengths:
        context = text_of_tokens(length)
        for cudnn in (True, False):
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
            run_parallelcomp(engine, timer, context, 16, facts, device)
            trials = [
                run_parallelcomp(engine, timer, context, 16, facts, device) for _ in range(repeats)
            ]
            stages = {
                key: statistics.median(t["stages_gpu_s"][key] for t in trials)
                for key in trials[0]["stages_gpu_s"]
            }
            row = {
                "length": length,
                "cudnn_sdp": cudnn,
                "ttft_s": statistics.median(t["ttft_s"] for t in trials),
                "ttft_runs_s": [t["ttft_s"] for t in trials],
                "stages_gpu_s": stages,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    torch.backends.cuda.enable_cudnn_sdp(True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b-shape")
    parser.add_argument("--kv-width", type=int, default=1700)
    parser.add_argument("--static-length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lengths", default="8K,32K,128K")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-ttft", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    model = build_model(args.model, device, torch.bfloat16)
    facts = model_facts(model)
    record = {
        "benchmark": "parallelcomp-llm anatomy",
        "command": "python -m parallelcomp_bench.speed.anatomy " + " ".join(sys.argv[1:]),
        "environment": provenance() | {"gpu": torch.cuda.get_device_name(device)},
        "ceilings": measure_ceilings(device, torch.bfloat16),
        "model": args.model,
        "model_facts": facts,
    }
    record["decode"] = decode_anatomy(model, args.kv_width, args.static_length, args.steps, device)
    print(json.dumps(record["decode"], indent=1), flush=True)
    if not args.skip_ttft:
        lengths = [parse_length(x) for x in args.lengths.split(",")]
        record["ttft"] = ttft_by_backend(model, device, lengths, args.repeats, facts)
    path = result_path(args.out, f"anatomy_{args.model}")
    path.write_text(json.dumps(record, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
