"""The memory model of docs/serving.md: a question costs its kept KV, not the context's.

Each measurement runs in a process of its own (peak RSS is per process), over a random 8-layer
Llama and a 16K-token context, with glibc's mmap threshold fixed so that freed tensors leave
the process and its peak RSS follows live memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_MEASURE = """
import json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.device import kv_bytes_per_token
from parallelcomp_llm.testing import TINY_SETTINGS, text_of_tokens, tiny_tokenizer

torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(
    vocab_size=260, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
    bos_token_id=256, eos_token_id=258, pad_token_id=259,
)).eval()
config = ParallelCompConfig(
    **TINY_SETTINGS, chunk_batch_size=2, kept_chunks="merge",
    context_cache_device_fraction=0.0, context_cache_host_fraction=0.0,
)
engine = ParallelCompEngine(model, tiny_tokenizer(), config)
context = text_of_tokens(16384)
engine.generate(context, "Warm up?", max_new_tokens=2)
questions = [f"Question {number}?" for number in range(int(sys.argv[1]))]
answers = engine.generate_batch(context, questions, max_new_tokens=4, ignore_eos=True)
kept = sum(answer.stats.kv_entries_kept for answer in answers) * kv_bytes_per_token(model)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
peak = int(status["VmHWM"].split()[0]) * 1024
print(json.dumps({"peak": peak, "kept": kept, "chunks": answers[0].stats.chunks_total}))
"""


def measure(questions: int) -> dict[str, int]:
    environment = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(questions)],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
        check=True,
    )
    return json.loads(done.stdout)


def test_eight_questions_cost_their_kept_kv_and_little_more():
    one, eight = measure(1), measure(8)
    assert one["chunks"] == eight["chunks"] == 9
    assert eight["kept"] == 8 * one["kept"] > 150 * 2**20
    assert eight["peak"] - one["peak"] < 1.2 * eight["kept"]
