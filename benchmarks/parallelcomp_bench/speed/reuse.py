"""Encode once, ask many: time of the first question over a corpus against later ones (GPU).

    python -m parallelcomp_bench.speed.reuse --model llama3-8b-shape --length 128K --out benchmarks/results

The first question pays for chunk prefill (`engine.encode`) and its own answer; later questions
over the returned `ContextCache` only run the question passes, eviction, the final pass and
decoding. Times are synchronised wall-clock seconds, medians over `--repeats` questions; four
questions answered as one `generate_batch` are timed too. `--tiny` runs a small CPU smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.device import device_work_done, start_measuring
from parallelcomp_llm.testing import text_of_tokens, tiny_engine, tiny_tokenizer

from ..records import provenance
from .measure import free_memory, peak_bytes, result_path
from .run import MODELS, NO_REUSE
from .shapes import build_model, parse_length

QUESTIONS = [
    "What is the pass key? Answer with the number only.",
    "Who is mentioned first?",
    "Summarise the text in one sentence.",
    "Which number appears most often?",
    "What happens at the end?",
]


def timed(device: torch.device, work):
    started = device_work_done(device)
    result = work()
    return result, device_work_done(device) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="llama3-8b-shape")
    parser.add_argument("--length", default="128K")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-scoring", default="nll", help="the engine's chunk scorer")
    parser.add_argument(
        "--scoring-heads",
        nargs="+",
        default=None,
        help="LAYER:KV_HEAD pairs, for --chunk-scoring heads",
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test with a tiny model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    scoring = {"chunk_scoring": args.chunk_scoring}
    if args.scoring_heads:
        scoring["scoring_heads"] = [tuple(map(int, h.split(":"))) for h in args.scoring_heads]
    if args.tiny:
        device, length, name = torch.device("cpu"), 2000, "tiny-llama"
        engine = tiny_engine("llama", **scoring, **NO_REUSE)
    else:
        device, length, name = torch.device("cuda"), parse_length(args.length), args.model
        model = build_model(args.model, device, torch.bfloat16)
        config = ParallelCompConfig(**scoring, **NO_REUSE)
        engine = ParallelCompEngine(model, tiny_tokenizer(), config)
    options = {"max_new_tokens": args.new_tokens, "ignore_eos": True}
    warm = engine.encode(text_of_tokens(min(length, 16_384), seed=99))
    engine.generate(warm, QUESTIONS[0], **options)
    del warm
    free_memory(device)
    start_measuring(device)
    context = text_of_tokens(length, seed=1)
    cache, encode_s = timed(device, lambda: engine.encode(context))
    first, first_answer_s = timed(device, lambda: engine.generate(cache, QUESTIONS[0], **options))
    later = [
        timed(device, lambda q=q: engine.generate(cache, q, **options))
        for q in QUESTIONS[1 : 1 + args.repeats]
    ]
    batch, batch_s = timed(device, lambda: engine.generate_batch(cache, QUESTIONS[1:5], **options))
    later_s = statistics.median(seconds for _, seconds in later)
    later_ttft = statistics.median(answer.stats.prefill_seconds for answer, _ in later)
    record = {
        "command": "python -m parallelcomp_bench.speed.reuse " + " ".join(sys.argv[1:]),
        "environment": provenance(),
        "engine": engine.describe(),
        "model": name,
        "chunk_scoring": args.chunk_scoring,
        "scoring_heads": scoring.get("scoring_heads"),
        "context_tokens": first.stats.context_tokens,
        "chunks": first.stats.chunks_total,
        "new_tokens": args.new_tokens,
        "cache_gib": cache.nbytes / (1 << 30),
        "first_question": {
            "encode_s": encode_s,
            "answer_s": first_answer_s,
            "total_s": encode_s + first_answer_s,
            "ttft_s": encode_s + first.stats.prefill_seconds,
        },
        "later_questions": {
            "runs": len(later),
            "median_total_s": later_s,
            "median_ttft_s": later_ttft,
            "all_total_s": [seconds for _, seconds in later],
            "cache_hit": all(answer.stats.context_cache_hit for answer, _ in later),
            "chunks_prefilled": sum(answer.stats.chunks_prefilled for answer, _ in later),
        },
        "batch_of_4_questions_s": batch_s,
        "speedup_total": (encode_s + first_answer_s) / later_s,
        "speedup_ttft": (encode_s + first.stats.prefill_seconds) / later_ttft,
        "peak_gib": (peak_bytes(device) or 0) / (1 << 30),
    }
    print(json.dumps(record, indent=2))
    scoring = "" if args.chunk_scoring == "nll" else f"_{args.chunk_scoring}"
    result_path(args.out, f"reuse_{name}{scoring}").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
