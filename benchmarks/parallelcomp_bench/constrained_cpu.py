"""Decoding speed with and without a `response_format`, on the CPU, with the default model.

    python -m parallelcomp_bench.constrained_cpu --repeats 5

Each repeat answers the same chat twice, interleaved: free text of a fixed length
(`ignore_eos`), and a JSON answer constrained by a schema of long string fields. Both go through
the engine's public API; the decoding time per token comes from `AnswerStats` (decode seconds over
new tokens). It also times the mask alone (`grammar.TokenConstraint.masked` over the model's
vocabulary). Writes `benchmarks/results/constrained_cpu.json`: per-run figures, the medians, their
ratio, and the provenance (code, software, hardware).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from parallelcomp_llm import ParallelCompEngine, ResponseFormat
from parallelcomp_llm.grammar import Grammars

from . import RESULTS_DIR
from .records import provenance

RESULTS = RESULTS_DIR / "constrained_cpu.json"
CHAT = [{"role": "user", "content": "Describe three cities you like, with a long note on each."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "cities": {
            "type": "array",
            "minItems": 3,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 40},
                    "country": {"type": "string", "maxLength": 40},
                    "population": {"type": "integer"},
                    "note": {"type": "string", "maxLength": 400},
                },
                "required": ["name", "country", "population", "note"],
            },
        }
    },
    "required": ["cities"],
}


def seconds_per_token(engine: ParallelCompEngine, **options: object) -> dict[str, float]:
    answer = engine.chat(CHAT, **options)
    stats = answer.stats
    return {
        "new_tokens": stats.new_tokens,
        "decode_seconds": stats.decode_seconds,
        "seconds_per_token": stats.decode_seconds / max(stats.new_tokens, 1),
        "finish_reason": answer.finish_reason,
    }


def mask_seconds(engine: ParallelCompEngine, rounds: int) -> float:
    """Median seconds of one mask over the vocabulary at the start of a `SCHEMA` answer."""
    grammars = Grammars(engine.tokenizer, engine.eos_token_ids)
    constraint = grammars.constraint(ResponseFormat(json_schema=SCHEMA))
    logits = torch.zeros(engine.model.config.vocab_size)
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        constraint.masked(logits)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256, help="free-text answer length")
    arguments = parser.parse_args(argv)
    engine = ParallelCompEngine.default(answer_reserve_tokens=1024)
    free_options = {"max_new_tokens": arguments.tokens, "ignore_eos": True}
    constrained_options = {"max_new_tokens": 1024, "response_format": SCHEMA}
    seconds_per_token(engine, **free_options)  # warm-up: first-call costs stay out of the figures
    seconds_per_token(engine, **constrained_options)
    runs: dict[str, list[dict[str, float]]] = {"free": [], "constrained": []}
    for _ in range(arguments.repeats):
        runs["free"].append(seconds_per_token(engine, **free_options))
        runs["constrained"].append(seconds_per_token(engine, **constrained_options))
    medians = {
        name: statistics.median(run["seconds_per_token"] for run in kind)
        for name, kind in runs.items()
    }
    record = {
        "what": "decoding seconds per token, default model, chat path, greedy",
        "runs": runs,
        "median_seconds_per_token": medians,
        "ratio_constrained_to_free": medians["constrained"] / medians["free"],
        "mask_median_seconds": mask_seconds(engine, 200),
        "schema": SCHEMA,
        "provenance": provenance(),
        "engine": engine.describe(),
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({key: record[key] for key in list(record)[2:5]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
