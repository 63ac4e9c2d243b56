"""Do CUDA-graph decoding and the growing cache give the same tokens? And what does a capture cost?

For each model shape (random weights on the GPU), the same requests run on two engines that differ
only in `decode_step` ("dynamic" and "cuda_graph"): one question over a long context, then a batch
of three questions of different lengths (rows padded to one width), then the first request again
(its graph is reused). It records the token ids of both, whether they are equal, the first step
at which they differ, and the seconds of each `decode_setup` stage (KV copy, plus the capture for a
new shape) and of the decoding.

    python -m parallelcomp_bench.speed.decode_check --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.testing import text_of_tokens, tiny_tokenizer

from ..records import provenance
from .measure import result_path
from .shapes import build_model

QUESTIONS = ["What is the pass key?", "Which part comes first, and why?", "Name it."]


class SetupClock:
    """Observer: host seconds of every `decode_setup` span (synchronised)."""

    def __init__(self) -> None:
        self.setups: list[float] = []
        self._started = 0.0

    def __call__(self, stage: str, phase: str) -> None:
        if stage != "decode_setup":
            return
        torch.cuda.synchronize()
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.setups.append(time.perf_counter() - self._started)


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def compare(engines: dict, clocks: dict, context: str, new_tokens: int) -> list[dict]:
    """The same three calls on every engine, side by side."""
    calls = [
        ("one question", lambda e: [e.generate(context, QUESTIONS[0], **options)]),
        ("three questions", lambda e: e.generate_batch(context, QUESTIONS, **options)),
        ("one question again", lambda e: [e.generate(context, QUESTIONS[0], **options)]),
    ]
    options = {"max_new_tokens": new_tokens, "ignore_eos": True}
    results = []
    for name, call in calls:
        entry: dict = {"call": name}
        for method, engine in engines.items():
            clocks[method].setups.clear()
            torch.cuda.synchronize()
            started = time.perf_counter()
            answers = call(engine)
            torch.cuda.synchronize()
            entry[method] = {
                "token_ids": [answer.token_ids for answer in answers],
                "seconds": time.perf_counter() - started,
                "decode_seconds": [answer.stats.decode_seconds for answer in answers],
                "decode_setup_s": list(clocks[method].setups),
            }
        dynamic, graph = entry["dynamic"]["token_ids"], entry["cuda_graph"]["token_ids"]
        entry["equal"] = dynamic == graph
        entry["first_difference"] = [first_difference(a, b) for a, b in zip(dynamic, graph)]
        results.append(entry)
        print(f"  {name}: equal={entry['equal']} first difference {entry['first_difference']}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", default="smollm2-shape:float32,llama3-8b-shape:bfloat16")
    parser.add_argument("--length", type=int, default=32_768)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    device = torch.device("cuda")
    record = {
        "benchmark": "parallelcomp-llm decode check",
        "command": "python -m parallelcomp_bench.speed.decode_check " + " ".join(sys.argv[1:]),
        "environment": provenance() | {"gpu": torch.cuda.get_device_name(device)},
        "context_tokens": args.length,
        "new_tokens": args.new_tokens,
        "shapes": [],
    }
    out = result_path(args.out, "decode_check")
    for item in args.shapes.split(","):
        shape, dtype_name = item.split(":")
        print(f"{shape} ({dtype_name})", flush=True)
        model = build_model(shape, device, getattr(torch, dtype_name))
        clocks = {method: SetupClock() for method in ("dynamic", "cuda_graph")}
        engines = {
            method: ParallelCompEngine(
                model,
                tiny_tokenizer(),
                ParallelCompConfig(
                    decode_step=method,
                    context_cache_device_fraction=0.0,
                    context_cache_host_fraction=0.0,
                ),
                observer=clocks[method],
            )
            for method in clocks
        }
        context = text_of_tokens(args.length)
        record["shapes"].append(
            {
                "shape": shape,
                "dtype": dtype_name,
                "calls": compare(engines, clocks, context, args.new_tokens),
            }
        )
        out.write_text(json.dumps(record, indent=1))
        del engines, model
        torch.cuda.empty_cache()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
