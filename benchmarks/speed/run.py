"""GPU speed benchmark: ParallelComp engine against plain transformers full attention.

For each context length, on the same input (prompt prefix + context + question, the tiny byte-level
tokenizer of `parallelcomp_llm.testing`, so one character is one token), this measures

- time to first token (TTFT: call start to the first generated token id on the host),
- prefill seconds (the engine's own `stats.prefill_seconds`; for full attention the TTFT),
- decode tokens per second over exactly 128 new tokens ((new_tokens - 1) / time from the first to
  the last generated token),
- peak CUDA memory allocated during the request (model weights included),

for `parallelcomp` (the engine, default config; `parallelcomp-bsN` = `chunk_batch_size=N`) and for
full attention (`sdpa`, `flash_attention_2` when flash-attn is importable): a plain
`model(input_ids, logits_to_keep=1)` prefill and a greedy decode loop over a DynamicCache that
takes each token to the host, as `generate` does. One warm-up and `--repeats` timed runs per
(method, length); medians reported. Models are random-initialised bf16 networks built from a
config on the GPU (speed does not depend on weight values). EOS is disabled for the engine
(`engine._eos_ids = set()`), so both methods produce exactly `--new-tokens` tokens.

Also measured in the same process: the GPU's bf16 matmul rate (8192^3) and device-to-device copy
bandwidth (bytes read + written), the engine's time per stage (CUDA events around chunk prefill,
question pass, merge, final question pass), the chunk-prefill TFLOP/s (useful FLOPs) and decode
time against the bandwidth floor, and optionally a torch.profiler summary of one request.

    PYTHONPATH=. python benchmarks/speed/run.py --model llama3-8b-shape \
        --lengths 8K,16K,32K,64K,128K --repeats 3 --out benchmarks/results
    PYTHONPATH=. python benchmarks/speed/run.py --tiny   # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import transformers  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

import parallelcomp_llm  # noqa: E402
from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine  # noqa: E402
from parallelcomp_llm import engine as engine_module  # noqa: E402
from parallelcomp_llm.attention import implementation_name  # noqa: E402
from parallelcomp_llm.prefill import kv_bytes_per_token  # noqa: E402
from parallelcomp_llm.testing import text_of_tokens, tiny_tokenizer  # noqa: E402

MODELS = {
    # Meta-Llama-3-8B's shape.
    "llama3-8b-shape": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    # SmolLM2-135M-Instruct's shape (the engine's default model).
    "smollm2-shape": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    # CPU smoke test only.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=768,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
}
NO_REUSE = ("context_cache_device_fraction", "context_cache_host_fraction")
QUESTION = "What is the pass key? Answer with the number only."
GIB = 1 << 30


# -- helpers ------------------------------------------------------------------------------------


def parse_length(text: str) -> int:
    text = text.strip().upper()
    if text.endswith("K"):
        return int(float(text[:-1]) * 1024)
    return int(text)


def result_path(out: str | Path, name: str) -> Path:
    """`out/NAME_<UTC time stamp>.json`, creating `out`."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}_{stamp}.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


class Events:
    """CUDA events by name (host perf_counter on CPU); spans measured in stream order."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def spans(self) -> dict[str, float]:
        """Seconds between each '<stage>:start' and its '<stage>:end', summed per stage."""
        totals: dict[str, float] = {}
        open_marks: dict[str, object] = {}
        for name, mark in self.marks:
            stage, _, edge = name.rpartition(":")
            if edge == "start":
                open_marks[stage] = mark
            elif edge == "end" and stage in open_marks:
                begin = open_marks.pop(stage)
                seconds = (
                    begin.elapsed_time(mark) / 1e3 if self.cuda else mark - begin  # type: ignore[union-attr]
                )
                totals[stage] = totals.get(stage, 0.0) + seconds
        return totals

    def between(self, first: str, last: str) -> float:
        marks = dict(self.marks)
        if self.cuda:
            return marks[first].elapsed_time(marks[last]) / 1e3  # type: ignore[union-attr]
        return marks[last] - marks[first]  # type: ignore[operator]


# -- model and FLOP / byte counts ---------------------------------------------------------------


def build_model(name: str, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(**MODELS[name], bos_token_id=256, eos_token_id=258, pad_token_id=259)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def model_facts(model: LlamaForCausalLM) -> dict:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    params = sum(p.numel() for p in model.parameters())
    embed = model.model.embed_tokens.weight.numel()
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    layer_linear = (
        config.hidden_size
        * head_dim
        * (config.num_attention_heads + 2 * config.num_key_value_heads)
        + config.num_attention_heads * head_dim * config.hidden_size
        + 3 * config.hidden_size * config.intermediate_size
    )
    # Bytes a decode step must read: every weight once, the input embedding only one row.
    decode_weight_bytes = (params - (0 if tied else embed)) * element
    return {
        "name_or_shape": config.model_type,
        "parameters": params,
        "parameter_bytes": params * element,
        "tied_embeddings": tied,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "intermediate": config.intermediate_size,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": head_dim,
        "vocab": config.vocab_size,
        "trained_window": config.max_position_embeddings,
        "rope_theta": (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
        or getattr(config, "rope_theta", None),
        "linear_params_per_layer": layer_linear,
        "kv_bytes_per_token": kv_bytes_per_token(model),
        "decode_weight_bytes": decode_weight_bytes,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def prefill_flops(facts: dict, row_tokens: list[int], logits_rows: int | None = None) -> float:
    """Useful FLOPs of a causal prefill of rows of these lengths (no padding), one logits row each."""
    linear = 2 * facts["layers"] * facts["linear_params_per_layer"]
    attention = 2 * 2 * facts["layers"] * facts["heads"] * facts["head_dim"]
    flops = 0.0
    for tokens in row_tokens:
        flops += linear * tokens + attention * tokens * (tokens + 1) / 2
    flops += (
        2
        * facts["hidden"]
        * facts["vocab"]
        * (logits_rows if logits_rows is not None else len(row_tokens))
    )
    return flops


# -- micro-benchmarks ---------------------------------------------------------------------------


def measure_ceilings(device: torch.device, dtype: torch.dtype) -> dict:
    if device.type != "cuda":
        return {"matmul_tflops": None, "copy_gbps": None}
    n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 5:
            times.append(start.elapsed_time(end) / 1e3)
    matmul = 2 * n**3 / statistics.median(times) / 1e12
    del a, b
    elements = GIB  # 2 GiB of bf16
    src = torch.randn(elements, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    times = []
    for i in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        if i >= 5:
            times.append(start.elapsed_time(end) / 1e3)
    copy = 2 * src.numel() * src.element_size() / statistics.median(times) / 1e9
    del src, dst
    free_memory(device)
    return {
        "matmul_tflops": matmul,
        "matmul_shape": [n, n, n],
        "copy_gbps": copy,
        "copy_bytes_counted": "read + written, 2 GiB buffer",
    }


# -- parallelcomp -------------------------------------------------------------------------------


class Instrument:
    """Benchmark-side timing hooks around the engine's stages (the engine is not modified).

    Wraps the names `prefill_rows`, `question_pass` and `TokenSampler` in `parallelcomp_llm.engine`
    and the engine instance's `_merge` / `_prefill_prompt` with CUDA events (no extra syncs).
    """

    def __init__(self, engine: ParallelCompEngine, device: torch.device) -> None:
        self.engine = engine
        self.device = device
        self.events = Events(device)
        self.rows: list[list[int]] = []
        self.token_times: list[float] = []
        self.originals = {
            "prefill_rows": engine_module.prefill_rows,
            "question_pass": engine_module.question_pass,
            "TokenSampler": engine_module.TokenSampler,
        }

    @contextlib.contextmanager
    def active(self):
        ev, orig, me = self.events, self.originals, self

        def prefill_rows(model, rows, *args, **kwargs):
            me.rows.append([len(r) for r in rows])
            ev.mark("chunk_prefill:start")
            out = orig["prefill_rows"](model, rows, *args, **kwargs)
            ev.mark("chunk_prefill:end")
            return out

        def question_pass(*args, **kwargs):
            ev.mark("question_pass:start")
            out = orig["question_pass"](*args, **kwargs)
            ev.mark("question_pass:end")
            return out

        class Sampler(orig["TokenSampler"]):
            def __call__(self, input_ids, logits):
                token = super().__call__(input_ids, logits)
                me.token_times.append(time.perf_counter())
                if len(me.token_times) == 1:
                    ev.mark("first_token")
                return token

        def timed(function, stage):
            def wrapper(*args, **kwargs):
                ev.mark(f"{stage}:start")
                out = function(*args, **kwargs)
                ev.mark(f"{stage}:end")
                return out

            return wrapper

        # Module-level stage functions (current engine) and instance methods (earlier engine).
        module_hooks = {
            "prefill_rows": prefill_rows,
            "question_pass": question_pass,
            "TokenSampler": Sampler,
        }
        for name, stage in (("merge_chunks", "merge"), ("run_final_pass", "final_question")):
            if hasattr(engine_module, name):
                orig[name] = getattr(engine_module, name)
                module_hooks[name] = timed(orig[name], stage)
        engine = self.engine
        instance_hooks = {}
        if "merge_chunks" not in module_hooks and hasattr(engine, "_merge"):
            instance_hooks["_merge"] = timed(engine._merge, "merge")
        if "run_final_pass" not in module_hooks and hasattr(engine, "_prefill_prompt"):
            instance_hooks["_prefill_prompt"] = timed(engine._prefill_prompt, "final_question")
        for name, hook in module_hooks.items():
            setattr(engine_module, name, hook)
        for name, hook in instance_hooks.items():
            setattr(engine, name, hook)
        try:
            yield self
        finally:
            for name in module_hooks:
                setattr(engine_module, name, orig[name])
            for name in instance_hooks:
                delattr(engine, name)


def run_parallelcomp(engine, context: str, new_tokens: int, facts: dict, device) -> dict:
    model = engine.model
    model.set_attn_implementation(implementation_name(engine.config.attn_implementation))
    engine._eos_ids = set()  # exactly `new_tokens` tokens (random weights; noted in the JSON)
    if hasattr(engine, "clear_context_cache"):
        engine.clear_context_cache()
    free_memory(device)
    instrument = Instrument(engine, device)
    with instrument.active():
        instrument.events.mark("request:start")
        started = time.perf_counter()
        answer = engine.generate(context, QUESTION, max_new_tokens=new_tokens)
        instrument.events.mark("request:end")
        sync(device)
        finished = time.perf_counter()
    stats = answer.stats
    times = instrument.token_times
    spans = instrument.events.spans()
    ttft = times[0] - started
    decode = times[-1] - times[0]
    chunk_flops = prefill_flops(facts, [n for batch in instrument.rows for n in batch])
    stage_gpu = {
        "chunk_prefill_s": spans.get("chunk_prefill", 0.0),
        "question_pass_s": spans.get("question_pass", 0.0),
        "merge_s": spans.get("merge", 0.0),
        "final_question_s": spans.get("final_question", 0.0),
        "request_start_to_first_token_s": instrument.events.between("request:start", "first_token"),
    }
    stage_gpu["store_evict_and_other_s"] = stage_gpu["request_start_to_first_token_s"] - sum(
        stage_gpu[k] for k in ("chunk_prefill_s", "question_pass_s", "merge_s", "final_question_s")
    )
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
        "batches": instrument.rows,
        "stages_gpu_s": stage_gpu,
        "chunk_prefill_flops": chunk_flops,
        "chunk_prefill_tflops": chunk_flops / stage_gpu["chunk_prefill_s"] / 1e12
        if stage_gpu["chunk_prefill_s"] > 0
        else None,
        "decode_mean_kv_entries": kv_entries,
        "decode_bytes_per_token": facts["decode_weight_bytes"]
        + kv_entries * facts["kv_bytes_per_token"],
    }


# -- full attention -----------------------------------------------------------------------------


@torch.inference_mode()
def run_full(
    model, kernel: str, prompt_ids: list[int], new_tokens: int, facts: dict, device
) -> dict:
    model.set_attn_implementation(kernel)
    free_memory(device)
    reset_peak(device)
    events = Events(device)
    started = time.perf_counter()
    events.mark("prefill:start")
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    cache = DynamicCache()
    output = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    events.mark("prefill:end")
    token = int(output.logits[0, -1].argmax())
    first = time.perf_counter()
    del output
    produced = [token]
    position = len(prompt_ids)
    for _ in range(new_tokens - 1):
        output = model(
            input_ids=torch.tensor([[token]], device=device),
            position_ids=torch.tensor([[position]], device=device),
            past_key_values=cache,
            use_cache=True,
        )
        token = int(output.logits[0, -1].argmax())
        produced.append(token)
        position += 1
    last = time.perf_counter()
    peak = peak_bytes(device)
    del cache, output
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


def engine_source_digest() -> str:
    """sha256 over parallelcomp_llm/*.py (the engine measured; it may hold uncommitted work)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(parallelcomp_llm.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def oom_record(error: BaseException) -> dict:
    message = str(error).splitlines()[0][:500]
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]i?B)", str(error))
    return {
        "status": "oom",
        "error": message,
        "tried_to_allocate": asked.group(1) if asked else None,
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
        summary["batches"] = trials[-1]["batches"]
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
        help="parallelcomp, parallelcomp-bsN (chunk_batch_size=N), sdpa, flash_attention_2",
    )
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
    sync(device)
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
            size = re.fullmatch(r"parallelcomp(?:-bs(\d+))?", method)
            if not size:
                raise SystemExit(f"unknown method {method}")
            settings = {"chunk_batch_size": int(size.group(1))} if size.group(1) else {}
            if args.tiny:
                # small reserves; keep 1 chunk and 128 entries so that every stage runs
                settings |= {
                    "question_reserve_tokens": 80,
                    "answer_reserve_tokens": 32,
                    "keep_chunks": 1,
                    "kv_budget": 128,
                }
            for field in NO_REUSE:  # measure encoding every time: no reuse of encoded contexts
                if field in ParallelCompConfig.model_fields:
                    settings[field] = 0.0
            engine_configs[method] = ParallelCompConfig(**settings)
    engines = {m: ParallelCompEngine(model, tokenizer, c) for m, c in engine_configs.items()}
    any_engine = next(iter(engines.values())) if engines else ParallelCompEngine(model, tokenizer)

    record = {
        "benchmark": "parallelcomp-llm speed",
        "command": "PYTHONPATH=. python " + " ".join([sys.argv[0]] + sys.argv[1:]),
        "started_utc": stamp,
        "environment": {
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "gpu_memory_bytes": torch.cuda.get_device_properties(device).total_memory
            if device.type == "cuda"
            else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "flash_attn_available": flash_ok,
            "parallelcomp_llm": getattr(parallelcomp_llm, "__version__", "0.1.0"),
            "engine_source_sha256": engine_source_digest(),
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
        "eos": "disabled for the engine (engine._eos_ids = set()); baseline loop never stops early",
        "engine_configs": {m: engines[m].config.model_dump() for m in engines},
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
                        engines[method], contexts[i], args.new_tokens, facts, device
                    )

                growth = 2.2
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
    engine.model.set_attn_implementation(implementation_name(engine.config.attn_implementation))
    engine._eos_ids = set()
    if hasattr(engine, "clear_context_cache"):
        engine.clear_context_cache()
    free_memory(device)
    with profile(activities=activities) as prof:
        engine.generate(context, QUESTION, max_new_tokens=new_tokens)
        sync(device)
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
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = int(out.logits[0, -1].argmax())
    del out
    position = kv_tokens

    def step(token, position, cache):
        out = model(
            input_ids=torch.tensor([[token]], device=device),
            position_ids=torch.tensor([[position]], device=device),
            past_key_values=cache,
            use_cache=True,
        )
        return int(out.logits[0, -1].argmax())

    for _ in range(3):
        token = step(token, position, cache)
        position += 1
    sync(device)
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
        sync(device)
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
