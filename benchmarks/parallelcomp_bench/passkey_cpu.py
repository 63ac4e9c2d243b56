"""Passkey at one length on CPU: `parallelcomp ask` (the CLI) against plain transformers.

    python -m parallelcomp_bench.passkey_cpu --tokens 32000 --depths 0.1 0.5 0.9

Both methods get the same haystack and question with the default model (SmolLM2-135M-Instruct,
trained window 8192). Plain transformers sees the whole prompt in its chat template and decodes
greedily. One JSON line per (method, depth) is appended to
`benchmarks/results/passkey_cpu.jsonl`, with the wall time and the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch
import transformers

from parallelcomp_llm.haystack import random_key
from parallelcomp_llm.testing import PASSKEY_QUESTION, first_integer, passkey_haystack

from . import RESULTS_DIR
from .records import git_revision, source_digest

RESULTS = RESULTS_DIR / "passkey_cpu.jsonl"
NEW_TOKENS = 16


def run_cli(haystack: str) -> tuple[str, float, dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as handle:
        handle.write(haystack)
    command = [
        sys.executable,
        "-m",
        "parallelcomp_llm.cli",
        "ask",
        "--context",
        handle.name,
        "--max-new-tokens",
        str(NEW_TOKENS),
        "--stats",
        PASSKEY_QUESTION,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    os.unlink(handle.name)
    stats = json.loads(result.stderr[result.stderr.index("{\n") :])
    return result.stdout.strip(), seconds, stats


def run_full(model, tokenizer, haystack: str) -> tuple[str, float]:
    messages = [{"role": "user", "content": haystack + "\n\n" + PASSKEY_QUESTION}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    seconds = time.perf_counter() - started
    text = tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    return text.strip(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=32_000)
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--methods", nargs="+", default=["parallelcomp", "full"])
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parallelcomp_llm.default_model import default_model_path

    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    model = None
    hardware = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for depth in args.depths:
        key = random_key(round(depth * 1000))
        haystack = passkey_haystack(args.tokens, depth, key, count)
        for method in args.methods:
            record = {
                "method": method,
                "tokens": count(haystack),
                "depth": depth,
                "key": key,
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            if method == "parallelcomp":
                answer, seconds, stats = run_cli(haystack)
                record |= {
                    "chunks_total": stats["chunks_total"],
                    "chunks_kept": stats["chunks_kept"],
                    "kv_entries_kept": stats["kv_entries_kept"],
                    "engine": stats["engine"],
                }
            else:
                if model is None:
                    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
                answer, seconds = run_full(model, tokenizer, haystack)
            record |= {
                "answer": answer,
                "correct": first_integer(answer) == key,
                "seconds": round(seconds, 1),
                "hardware": hardware,
                "git": git_revision(),
                "source_sha256": source_digest(),
            }
            print(json.dumps(record), flush=True)
            with RESULTS.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
