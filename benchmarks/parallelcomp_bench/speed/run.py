"""GPU speed benchmark: ParallelComp engine against plain transformers full attention.

For each context length, on the same input (prompt prefix + context + question, the tiny byte-level
tokenizer of `parallelcomp_llm.testing`, so one character is one token), this measures

- time to first token (TTFT: call start to the first generated token id on the host),
- prefill seconds (the engine's own `stats.prefill_seconds`; for full attention the TTFT),
- decode tokens per second over exactly 128 new tokens ((new_tokens - 1) / time from the first to
  the last generated token),
- peak CUDA memory allocated during the request (model weights included),

for `parallelcomp` (the engine, default config: the kept chunks read again; `parallelcomp-merge`
decodes over their merged KV, the paper's method; `-bsN` sets `chunk_batch_size=N`, a
decode step's name `decode_step`, `-key_match` `chunk_scoring="key_match"`, `-headsN`
`chunk_scoring="heads"` with KV head 0 of layer N as its one head) and for
full attention (`sdpa`, `flash_attention_2` when flash-attn is importable): a plain prefill and a
greedy decode loop over a DynamicCache that takes each token to the host, as `generate` does. One
warm-up and `--repeats` timed runs per (method, length); medians reported. Models are
random-initialised bf16 networks built from a config on the GPU (speed does not depend on weight
values). The engine decodes with `ignore_eos=True`, so both methods produce exactly
`--new-tokens` tokens.

Also measured in the same process: the GPU's bf16 matmul rate (8192^3) and device-to-device copy
bandwidth (bytes read + written), the engine's time per stage (CUDA events placed by the engine's
stage observer, `StageTimer`), the chunk-prefill TFLOP/s (useful FLOPs) and decode time against the
bandwidth floor, and optionally a torch.profiler summary of one request (its `parallelcomp/<stage>`
ranges included).

    python -m parallelcomp_bench.speed.run --model llama3-8b-shape \
        --lengths 8K,16K,32K,64K,128K --repeats 3 --out benchmarks/results
    python -m parallelcomp_bench.speed.run --tiny   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.device import device_work_done
from parallelcomp_llm.testing import text_of_tokens, tiny_tokenizer

from ..records import provenance
from .full_attention import decode_busy, run_full, run_static_generate
from .measure import GIB, free_memory, measure_ceilings, oom_record, result_path
from .shapes import MODELS, build_model, model_facts, parse_length, prefill_flops
from .stage_timer import StageTimer

NO_REUSE = {"context_cache_device_fraction": 0.0, "context_cache_host_fraction": 0.0}
"""Every request encodes its context: no reuse of encoded contexts."""
QUESTION = "What is the pass key? Answer with the number only."


def run_parallelcomp(
    engine: ParallelCompEngine,
    timer: StageTimer,
    context: str,
    new_tokens: int,
    facts: dict,
    device,
) -> dict:
    """One engine request of exactly `new_tokens` tokens, timed by the engine's observer."""
    engine.clear_context_cache()
    free_memory(device)
    timer.start()
    started = time.perf_counter()
    answer = engine.generate(context, QUESTION, max_new_tokens=new_tokens, ignore_eos=True)
    finished = device_work_done(device)
    stats = answer.stats
    times = timer.token_times
    ttft = times[0] - started
    decode = times[-1] - times[0]
    prefix = len(engine.prompts.prefix_ids)
    # a scorer of the first layers stops the chunk prefill after them when the chunks are read again
    depth = engine.stages.scorer.layers_read
    run = facts | {"layers": depth} if depth and engine.config.kept_chunks == "reread" else facts
    chunk_flops = prefill_flops(run, [prefix + chunk.tokens for chunk in stats.chunks])
    stage_gpu = timer.stage_seconds()
    kv_entries = stats.prompt_tokens + new_tokens / 2  # mean KV length per layer/head during decode
    return {
        "ttft_s": ttft,
        "prefill_s": stats.prefill_seconds,
        "decode_s": decode,
        "new_tokens": stats.new_tokens,
        "decode_tok_s": (stats.new_tokens - 1) / decode if decode > 0 else None,
        "total_s": finished - started,
        "peak_memory_bytes": stats.peak_memory_bytes if device.type == "cuda" else None,
        "engine_stats": {
            "context_tokens": stats.context_tokens,
            "prompt_tokens": stats.prompt_tokens,
            "chunks_total": stats.chunks_total,
            "chunks_kept": stats.chunks_kept,
            "kv_entries_kept": stats.kv_entries_kept,
            "prefill_seconds": stats.prefill_seconds,
            "decode_seconds": stats.decode_seconds,
        },
        "rows_per_prefill_pass": list(timer.batches),
        "stages_gpu_s": stage_gpu,
        "chunk_prefill_flops": chunk_flops,
        "chunk_prefill_tflops": chunk_flops / stage_gpu["chunk_prefill_s"] / 1e12
        if stage_gpu["chunk_prefill_s"] > 0
        else None,
        "decode_mean_kv_entries": kv_entries,
        "decode_bytes_per_token": facts["decode_weight_bytes"]
        + kv_entries * facts["kv_bytes_per_token"],
    }


# -- driver -------------------------------------------------------------------------------------


def summarise(trials: list[dict], ceilings: dict) -> dict:
    def med(key):
        values = [t[key] for t in trials if t.get(key) is not None]
        return statistics.median(values) if values else None

    summary = {
        k: med(k)
        for k in (
            "ttft_s",
            "prefill_s",
            "prefill_gpu_s",
            "decode_s",
            "decode_tok_s",
            "total_s",
            "chunk_prefill_tflops",
            "prefill_tflops",
        )
    }
    peaks = [t["peak_memory_bytes"] for t in trials if t.get("peak_memory_bytes") is not None]
    summary["peak_memory_bytes"] = max(peaks) if peaks else None
    if trials and "stages_gpu_s" in trials[0]:
        summary["stages_gpu_s"] = {
            k: statistics.median(t["stages_gpu_s"][k] for t in trials)
            for k in trials[0]["stages_gpu_s"]
        }
        summary["engine_stats"] = trials[-1]["engine_stats"]
        summary["rows_per_prefill_pass"] = trials[-1]["rows_per_prefill_pass"]
    if trials:
        summary["decode_bytes_per_token"] = trials[-1]["decode_bytes_per_token"]
        summary["new_tokens"] = trials[-1]["new_tokens"]
    matmul, copy = ceilings.get("matmul_tflops"), ceilings.get("copy_gbps")
    rate = summary.get("chunk_prefill_tflops") or summary.get("prefill_tflops")
    summary["prefill_fraction_of_matmul"] = rate / matmul if rate and matmul else None
    if copy and summary.get("decode_tok_s"):
        floor = summary["decode_bytes_per_token"] / (copy * 1e9)
        summary["decode_floor_s_per_token"] = floor
        summary["decode_fraction_of_floor"] = floor * summary["decode_tok_s"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="llama3-8b-shape")
    parser.add_argument("--lengths", default="8K,16K,32K,64K,128K")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--methods",
        default="parallelcomp,sdpa,flash_attention_2",
        help="parallelcomp (the default config), parallelcomp-merge (kept_chunks='merge'), "
        "either with -bsN (chunk_batch_size=N) and -dynamic / -static / -cuda_graph / -compiled "
        "(decode_step), -key_match or -headsN (chunk_scoring); sdpa, "
        "flash_attention_2, hf-static (transformers' generate with its static cache: the "
        "decode anchor, over the last --anchor-tokens prompt tokens)",
    )
    parser.add_argument("--anchor-tokens", type=int, default=3200)
    parser.add_argument(
        "--extra-at",
        default="",
        help="methods run only at the longest length, e.g. parallelcomp-bs4",
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=1e9,
        help="stop starting timed runs that would end past this many seconds",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="torch.profiler summary of one parallelcomp request at the longest length",
    )
    parser.add_argument("--profile-new-tokens", type=int, default=16)
    parser.add_argument(
        "--tiny", action="store_true", help="CPU smoke test: tiny model, short lengths"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    begun = time.perf_counter()

    if args.tiny:
        args.model = "tiny"
        args.lengths = "256,1K"
        args.new_tokens = min(args.new_tokens, 8)
        args.repeats = min(args.repeats, 2)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = [parse_length(x) for x in args.lengths.split(",") if x]
    methods = [m for m in args.methods.split(",") if m]
    extra = [m for m in args.extra_at.split(",") if m]
    flash_ok = False
    try:
        import flash_attn  # noqa: F401

        flash_ok = device.type == "cuda"
    except ImportError:
        pass

    out_path = result_path(args.out, f"speed_{args.model}{('_' + args.tag) if args.tag else ''}")
    stamp = out_path.stem.rsplit("_", 1)[1]

    print(f"[{time.perf_counter() - begun:6.1f}s] measuring ceilings", flush=True)
    ceilings = measure_ceilings(device, dtype)
    print(
        f"  matmul {ceilings['matmul_tflops']} TFLOP/s, copy {ceilings['copy_gbps']} GB/s",
        flush=True,
    )

    model = build_model(args.model, device, dtype)
    device_work_done(device)
    facts = model_facts(model)
    weights_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    print(
        f"[{time.perf_counter() - begun:6.1f}s] model built: {facts['parameters'] / 1e9:.3f}B params",
        flush=True,
    )

    tokenizer = tiny_tokenizer()
    engine_configs = {}
    for method in methods + extra:
        if method.startswith("parallelcomp"):
            variant = re.fullmatch(
                r"parallelcomp(-merge)?(?:-bs(\d+))?(?:-(dynamic|static|cuda_graph|compiled))?"
                r"(?:-(key_match))?(?:-heads(\d+))?",
                method,
            )
            if not variant:
                raise SystemExit(f"unknown method {method}")
            settings: dict = {}
            if variant.group(1):
                settings["kept_chunks"] = "merge"  # the paper's method: decode over merged KV
            if variant.group(2):
                settings["chunk_batch_size"] = int(variant.group(2))
            if variant.group(3):
                settings["decode_step"] = variant.group(3)
            if variant.group(4):
                settings["chunk_scoring"] = variant.group(4)
            if variant.group(5):
                settings["chunk_scoring"] = "heads"
                settings["scoring_heads"] = [(int(variant.group(5)), 0)]
            if args.tiny:
                # small reserves; keep 1 chunk and 128 entries so that every stage runs
                settings |= {
                    "question_reserve_tokens": 80,
                    "answer_reserve_tokens": 32,
                    "keep_chunks": 1,
                    "kv_budget": 128,
                }
            settings |= NO_REUSE  # measure encoding every time: no reuse of encoded contexts
            engine_configs[method] = ParallelCompConfig(**settings)
    timers = {m: StageTimer(model, device) for m in engine_configs}
    engines = {
        m: ParallelCompEngine(model, tokenizer, c, observer=timers[m])
        for m, c in engine_configs.items()
    }
    any_engine = next(iter(engines.values())) if engines else ParallelCompEngine(model, tokenizer)

    record = {
        "benchmark": "parallelcomp-llm speed",
        "command": "python -m parallelcomp_bench.speed.run " + " ".join(sys.argv[1:]),
        "started_utc": stamp,
        "environment": provenance()
        | {
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "gpu_memory_bytes": torch.cuda.get_device_properties(device).total_memory
            if device.type == "cuda"
            else None,
            "cuda": torch.version.cuda,
            "flash_attn_available": flash_ok,
        },
        "ceilings": ceilings,
        "model": args.model,
        "model_facts": facts,
        "model_weights_allocated_bytes": weights_bytes,
        "weights": "random init from the config, bf16 on GPU (speed does not depend on values)",
        "tokenizer": "parallelcomp_llm.testing.tiny_tokenizer (byte-level, chat template); "
        "context = text_of_tokens(length), 1 char = 1 token",
        "question": QUESTION,
        "new_tokens": args.new_tokens,
        "eos": "ignored by the engine (ignore_eos=True); the baseline loop never stops early",
        "engines": {m: engines[m].describe() for m in engines},
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timing": "TTFT/decode: host perf_counter, synchronised by the token's transfer to the host; "
        "stages: CUDA events; medians over timed runs",
        "results": [],
    }

    def save():
        out_path.write_text(json.dumps(record, indent=1))

    def elapsed():
        return time.perf_counter() - begun

    last_cost: dict[str, float] = {}
    prompts = any_engine.prompts

    def full_prompt(context: str) -> list[int]:
        return prompts.prefix_ids + prompts.encode(context) + prompts.question_ids(QUESTION)

    for length in lengths:
        # A different text for every run (seed = run index), the same for both methods.
        contexts = [text_of_tokens(length, seed=i) for i in range(args.warmup + args.repeats)]
        prompt_ids = full_prompt(contexts[0])
        todo = methods + (extra if length == max(lengths) else [])
        for method in todo:
            entry = {
                "method": method,
                "length": length,
                "prompt_tokens_full": len(prompt_ids),
                "status": "ok",
                "trials": [],
                "warmup_trials": 0,
            }
            if method == "flash_attention_2" and not flash_ok:
                entry["status"] = "unavailable: flash-attn is not installed"
                record["results"].append(entry)
                save()
                continue
            if method.startswith("parallelcomp"):

                def call(i, method=method, contexts=contexts):
                    return run_parallelcomp(
                        engines[method], timers[method], contexts[i], args.new_tokens, facts, device
                    )

                growth = 2.2
            elif method == "hf-static":

                def call(i, contexts=contexts):
                    # The decode anchor: a prompt as long as ParallelComp's merged KV.
                    prompt = full_prompt(contexts[i])[-args.anchor_tokens :]
                    return run_static_generate(model, prompt, args.new_tokens, facts, device)

                growth = 1.0
            else:

                def call(i, method=method, contexts=contexts):
                    return run_full(
                        model, method, full_prompt(contexts[i]), args.new_tokens, facts, device
                    )

                growth = 3.0
            for trial in range(args.warmup + args.repeats):
                estimate = last_cost.get(f"{method}@{length}") or growth * last_cost.get(
                    method, 0.0
                )
                if elapsed() + estimate > args.budget_s:
                    entry["status"] = "ok" if entry["trials"] else "skipped: time budget"
                    entry["note"] = f"stopped after {len(entry['trials'])} timed runs: time budget"
                    break
                t0 = time.perf_counter()
                try:
                    result = call(trial)
                except torch.OutOfMemoryError as error:
                    entry.update(oom_record(error))
                    del error
                    free_memory(device)
                    break
                except Exception as error:  # record, go on with the next method
                    entry["status"] = f"error: {type(error).__name__}: {str(error)[:300]}"
                    entry["traceback"] = traceback.format_exc()[-2000:]
                    free_memory(device)
                    break
                cost = time.perf_counter() - t0
                last_cost[f"{method}@{length}"] = cost
                last_cost[method] = cost
                if trial < args.warmup:
                    entry["warmup_trials"] += 1
                    entry.setdefault("warmup", []).append(
                        {k: result.get(k) for k in ("ttft_s", "decode_s", "total_s")}
                        | {"wall_s": cost}
                    )
                    print(
                        f"[{elapsed():6.1f}s] {method:>18} {length:>7}: warm-up {cost:.1f}s wall, "
                        f"ttft {result['ttft_s']:.3f}s decode {result['decode_s']:.2f}s",
                        flush=True,
                    )
                    continue
                entry["trials"].append(result)
                print(
                    f"[{elapsed():6.1f}s] {method:>18} {length:>7}: ttft {result['ttft_s']:.3f}s "
                    f"decode {result['decode_tok_s'] or 0:.1f} tok/s peak "
                    f"{(result['peak_memory_bytes'] or 0) / GIB:.2f} GiB",
                    flush=True,
                )
            if entry["trials"]:
                entry["median"] = summarise(entry["trials"], ceilings)
            record["results"].append(entry)
            free_memory(device)
            save()

    if (
        args.profile
        and engines
        and elapsed() + 2 * last_cost.get("parallelcomp", 0.0) + 30 < args.budget_s
    ):
        record["profile"] = profile_request(
            engines.get("parallelcomp") or next(iter(engines.values())),
            text_of_tokens(max(lengths), seed=99),
            args.profile_new_tokens,
            device,
            out_path.parent,
            out_path.stem,
        )
        save()
    if args.profile and elapsed() + 20 < args.budget_s:
        kv = next(
            (
                e["median"]["engine_stats"]["prompt_tokens"]
                for e in record["results"]
                if e["method"] == "parallelcomp" and e.get("median")
            ),
            3200,
        )
        try:
            record["decode_busy"] = decode_busy(
                model, facts, kv, 32 if not args.tiny else 4, device, ceilings.get("copy_gbps")
            )
        except Exception as error:  # an extra; never lose the main results for it
            record["decode_busy"] = {"error": f"{type(error).__name__}: {error}"[:500]}
        print("decode step:", record["decode_busy"], flush=True)
        save()
    record["wall_seconds"] = elapsed()
    save()
    print_table(record)
    print(f"wrote {out_path}")


def profile_request(
    engine, context: str, new_tokens: int, device, out_dir: Path, stem: str
) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    engine.clear_context_cache()
    free_memory(device)
    # The model runs in the engine's worker thread: profile every thread, not only this one.
    threads = torch.profiler._ExperimentalConfig(profile_all_threads=True)
    with profile(activities=activities, experimental_config=threads) as prof:
        engine.generate(context, QUESTION, max_new_tokens=new_tokens, ignore_eos=True)
        device_work_done(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    table = averages.table(sort_by=sort, row_limit=30, max_name_column_width=70)
    path = out_dir / f"{stem}_profile.txt"
    path.write_text(table)
    rows = []
    for item in averages:
        device_us = getattr(item, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(item, "self_cuda_time_total", 0)
        rows.append(
            {
                "name": item.key[:120],
                "calls": item.count,
                "self_device_ms": device_us / 1e3,
                "self_cpu_ms": item.self_cpu_time_total / 1e3,
            }
        )
    rows.sort(key=lambda r: r["self_device_ms"], reverse=True)
    return {
        "context_tokens": len(context),
        "new_tokens": new_tokens,
        "table_file": path.name,
        "total_self_device_ms": sum(r["self_device_ms"] for r in rows),
        "top": rows[:40],
    }


def print_table(record: dict) -> None:
    print(
        f"\n{record['model']}  gpu={record['environment']['gpu']}  "
        f"matmul={record['ceilings']['matmul_tflops']}  copy={record['ceilings']['copy_gbps']}"
    )
    print(
        f"{'method':>18} {'length':>7} {'ttft_s':>8} {'prefill':>8} {'tok/s':>7} {'peakGiB':>8} "
        f"{'pf_TF/s':>8} {'%floor':>7} status"
    )
    for entry in record["results"]:
        m = entry.get("median") or {}
        rate = m.get("chunk_prefill_tflops") or m.get("prefill_tflops")

        def fmt(value, spec):
            return format(value, spec) if value is not None else "-"

        print(
            f"{entry['method']:>18} {entry['length']:>7} {fmt(m.get('ttft_s'), '8.3f')} "
            f"{fmt(m.get('prefill_s'), '8.3f')} {fmt(m.get('decode_tok_s'), '7.1f')} "
            f"{fmt((m.get('peak_memory_bytes') or 0) / GIB if m.get('peak_memory_bytes') else None, '8.2f')} "
            f"{fmt(rate, '8.1f')} {fmt(100 * m['decode_fraction_of_floor'] if m.get('decode_fraction_of_floor') else None, '7.1f')} "
            f"{entry['status']} {entry.get('tried_to_allocate') or ''}"
        )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
