"""Out-of-memory behaviour on a real GPU: fill the device, then ask over a long context.

    python -m parallelcomp_bench.speed.oom --out benchmarks/results

With little free memory, a chunk batch that does not fit is retried with half as many chunks;
with almost none, the request raises `DeviceMemoryError`, and the next request works once memory
is back. The rows of every chunk prefill pass are recorded with a forward hook. `same_answer`
compares with the first (cold) answer made with ample memory, `after_errors_same_answer` with a
second (warm) one; `peak_gib` under pressure includes the block that fills the device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from parallelcomp_llm import DeviceMemoryError, ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.testing import text_of_tokens, tiny_tokenizer

from ..records import provenance
from .measure import GIB, free_memory, result_path
from .run import NO_REUSE
from .shapes import build_model


def fill_until_free(device: torch.device, free_bytes: int) -> torch.Tensor:
    """Allocate one block so that about `free_bytes` stay free on the device."""
    free_memory(device)
    available = torch.cuda.mem_get_info(device)[0]
    return torch.empty(max(0, available - free_bytes), dtype=torch.uint8, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llama3-8b-shape")
    parser.add_argument("--length", type=int, default=65_536)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    device = torch.device("cuda")
    model = build_model(args.model, device, torch.bfloat16)
    config = ParallelCompConfig(chunk_batch_size=8, **NO_REUSE)
    engine = ParallelCompEngine(model, tiny_tokenizer(), config)
    passes: list[int] = []
    model.register_forward_pre_hook(
        lambda module, a, kw: (
            passes.append(kw["input_ids"].shape[0]) if kw["input_ids"].shape[1] > 1000 else None
        ),
        with_kwargs=True,
    )
    context, question = text_of_tokens(args.length, seed=3), "What comes next?"
    reference = engine.generate(context, question, max_new_tokens=16)
    ample_passes, passes[:] = list(passes), []
    repeat = engine.generate(context, question, max_new_tokens=16)
    passes[:] = []
    record = {
        "command": "python -m parallelcomp_bench.speed.oom " + " ".join(sys.argv[1:]),
        "environment": provenance(),
        "engine": engine.describe(),
        "model": args.model,
        "context_tokens": reference.stats.context_tokens,
        "chunk_batch_size": 8,
        "ample_memory": {
            "rows_per_pass": ample_passes,
            "peak_gib": reference.stats.peak_memory_bytes / GIB,
        },
    }
    for label, free_gib in (("tight", 6.0), ("starved", 0.5)):
        filler = fill_until_free(device, int(free_gib * GIB))
        started = time.perf_counter()
        try:
            answer = engine.generate(context, question, max_new_tokens=16)
            outcome = {
                "same_answer": answer.token_ids == reference.token_ids,
                "peak_gib": answer.stats.peak_memory_bytes / GIB,
            }
        except DeviceMemoryError as error:
            outcome = {"error": f"DeviceMemoryError: {error}"}
        outcome |= {
            "free_gib_at_start": free_gib,
            "rows_per_pass": list(passes),
            "seconds": time.perf_counter() - started,
        }
        passes[:] = []
        del filler
        free_memory(device)
        record[label] = outcome
    after = engine.generate(context, question, max_new_tokens=16)
    record["after_errors_same_answer"] = after.token_ids == repeat.token_ids
    print(json.dumps(record, indent=2))
    result_path(args.out, f"oom_{args.model}").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
