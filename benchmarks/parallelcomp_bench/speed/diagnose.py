"""Where the time goes: focused measurements behind the speed benchmark's figures (GPU).

1. Chunk-prefill attention path: one batched forward of `--rows` chunk rows of `--row-tokens`
   tokens, as the engine's `prefill_rows` runs it (left padding, 2-D attention mask, positions
   from 0), with all rows of equal length (transformers drops the all-ones mask and SDPA runs
   causal, flash path) against the same batch with one row a single token shorter (the mask is
   kept: a boolean 4-D mask, SDPA's masked kernel), and with no mask at all.
2. Decode step: wall time against GPU kernel time per token over a cache of the size the engine
   decodes over (the host-overhead share of eager decoding).
3. First-call cost: the engine's first and second request at one length.
4. torch.profiler summary of one ParallelComp request at `--profile-length`.

    python -m parallelcomp_bench.speed.diagnose --model llama3-8b-shape --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from transformers import DynamicCache

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.device import device_work_done
from parallelcomp_llm.kvcache import run_on_cache
from parallelcomp_llm.testing import text_of_tokens, tiny_tokenizer

from ..records import provenance
from .full_attention import decode_busy
from .measure import Events, free_memory, measure_ceilings, result_path
from .run import MODELS, NO_REUSE, profile_request, run_parallelcomp
from .shapes import build_model, model_facts, parse_length, prefill_flops
from .stage_timer import StageTimer


@torch.inference_mode()
def batched_forward(model, lengths: list[int], pad_id: int, mask: bool, device) -> float:
    """Seconds (CUDA events) of one left-padded batched prefill like the engine's prefill_rows."""
    width = max(lengths)
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 256, (n,), generator=generator).tolist() for n in lengths]
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    attention_mask = torch.tensor(
        [[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device
    )
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    events = Events(device)
    events.mark("fwd:start")
    cache = DynamicCache()
    run_on_cache(
        model, input_ids, position_ids, cache, attention_mask if mask else None, logits_to_keep=1
    )
    events.mark("fwd:end")
    device_work_done(device)
    return events.spans()["fwd"]


def attention_path(model, facts, rows: int, row_tokens: int, device, matmul) -> dict:
    model.set_attn_implementation("sdpa")
    variants = {
        "equal_rows_mask_dropped": ([row_tokens] * rows, True),
        "one_row_1_token_shorter_masked": ([row_tokens] * (rows - 1) + [row_tokens - 1], True),
        "equal_rows_no_mask": ([row_tokens] * rows, False),
    }
    out = {"rows": rows, "row_tokens": row_tokens}
    for name, (lengths, mask) in variants.items():
        free_memory(device)
        batched_forward(model, lengths, 259, mask, device)  # warm-up
        times = [batched_forward(model, lengths, 259, mask, device) for _ in range(2)]
        seconds = statistics.median(times)
        flops = prefill_flops(facts, lengths)
        out[name] = {
            "seconds": seconds,
            "tflops": flops / seconds / 1e12,
            "fraction_of_matmul": flops / seconds / 1e12 / matmul if matmul else None,
        }
        print(f"  {name}: {seconds:.3f} s, {flops / seconds / 1e12:.0f} TFLOP/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="llama3-8b-shape")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--row-tokens", type=int, default=7288)
    parser.add_argument("--first-call-length", default="16K")
    parser.add_argument("--profile-length", default="128K")
    parser.add_argument("--profile-new-tokens", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        args.model, args.rows, args.row_tokens = "tiny", 3, 300
        args.first_call_length, args.profile_length, args.profile_new_tokens = "1K", "1K", 4
    begun = time.perf_counter()
    out_path = result_path(args.out, f"diagnose_{args.model}")
    stamp = out_path.stem.rsplit("_", 1)[1]
    record: dict = {
        "command": "python -m parallelcomp_bench.speed.diagnose " + " ".join(sys.argv[1:]),
        "started_utc": stamp,
        "environment": provenance(),
    }

    def save():
        out_path.write_text(json.dumps(record, indent=1))

    ceilings = measure_ceilings(device, dtype)
    record["ceilings"] = ceilings
    model = build_model(args.model, device, dtype)
    facts = model_facts(model)
    record["model"], record["model_facts"] = args.model, facts
    print(f"[{time.perf_counter() - begun:5.1f}s] ceilings {ceilings}", flush=True)

    print("1. chunk-prefill attention path", flush=True)
    try:
        record["attention_path"] = attention_path(
            model, facts, args.rows, args.row_tokens, device, ceilings.get("matmul_tflops")
        )
    except Exception as error:
        record["attention_path"] = {"error": f"{type(error).__name__}: {error}"[:500]}
    save()

    settings = dict(NO_REUSE)
    if args.tiny:
        settings |= {"question_reserve_tokens": 80, "answer_reserve_tokens": 32}
    timer = StageTimer(model, device)
    engine = ParallelCompEngine(
        model, tiny_tokenizer(), ParallelCompConfig(**settings), observer=timer
    )
    record["engine"] = engine.describe()

    print(f"[{time.perf_counter() - begun:5.1f}s] 3. first-call cost", flush=True)
    length = parse_length(args.first_call_length)
    calls = []
    for seed in range(3):
        t0 = time.perf_counter()
        context = text_of_tokens(length, seed=seed)
        result = run_parallelcomp(
            engine, timer, context, 128 if not args.tiny else 8, facts, device
        )
        calls.append(
            {
                "wall_s": time.perf_counter() - t0,
                "ttft_s": result["ttft_s"],
                "decode_s": result["decode_s"],
                "total_s": result["total_s"],
            }
        )
        print(f"  call {seed}: {calls[-1]}", flush=True)
    record["first_call"] = {"length": length, "calls": calls}
    save()

    print(f"[{time.perf_counter() - begun:5.1f}s] 2. decode step", flush=True)
    kv = result["engine_stats"]["prompt_tokens"]
    try:
        record["decode_busy"] = decode_busy(
            model, facts, kv, 32 if not args.tiny else 4, device, ceilings.get("copy_gbps")
        )
    except Exception as error:
        record["decode_busy"] = {"error": f"{type(error).__name__}: {error}"[:500]}
    print(f"  {record['decode_busy']}", flush=True)
    save()

    print(f"[{time.perf_counter() - begun:5.1f}s] 4. profile", flush=True)
    try:
        record["profile"] = profile_request(
            engine,
            text_of_tokens(parse_length(args.profile_length), seed=7),
            args.profile_new_tokens,
            device,
            out_path.parent,
            out_path.stem,
        )
        for row in record["profile"]["top"][:15]:
            print(f"  {row['self_device_ms']:10.1f} ms  {row['calls']:7d}  {row['name'][:90]}")
    except Exception as error:
        record["profile"] = {"error": f"{type(error).__name__}: {error}"[:500]}
    record["wall_seconds"] = time.perf_counter() - begun
    save()
    print(f"wrote {out_path} in {record['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
