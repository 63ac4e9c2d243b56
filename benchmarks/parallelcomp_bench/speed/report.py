"""Markdown table and PNG plot from the JSON files of `parallelcomp_bench.speed.run`.

    python -m parallelcomp_bench.speed.report benchmarks/results/speed_*.json \
        --md benchmarks/results/speed.md --png benchmarks/results/speed.png

Takes the newest file per model when several are given.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

GIB = 1 << 30
TOTAL = "request_start_to_first_token_s"


def fmt(value, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def length_label(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def load(paths: list[str]) -> list[dict]:
    """One record per model: the newest file's header, and for each (method, length) the entry
    of the newest file that measured it (a later partial run fills what an earlier one missed)."""
    records = []
    for path in sorted(paths):
        record = json.loads(Path(path).read_text())
        if "results" in record:
            record["_file"] = Path(path).name
            records.append(record)
    records.sort(key=lambda r: r["started_utc"])
    merged: dict[str, dict] = {}
    for record in records:
        base = merged.setdefault(record["model"], {**record, "results": [], "_files": []})
        base["_files"].append(record["_file"])
        for entry in record["results"]:
            entry = {**entry, "_file": record["_file"], "_command": record["command"]}
            same = [
                i
                for i, e in enumerate(base["results"])
                if (e["method"], e["length"]) == (entry["method"], entry["length"])
            ]
            if not same:
                base["results"].append(entry)
            elif entry["trials"] or not base["results"][same[0]]["trials"]:
                base["results"][same[0]] = entry
    order = {"llama3-8b-shape": 0, "smollm2-shape": 1}
    for record in merged.values():
        methods = []
        for entry in record["results"]:
            if entry["method"] not in methods:
                methods.append(entry["method"])
        record["results"].sort(key=lambda e: (e["length"], methods.index(e["method"])))
        record["_file"] = ", ".join(record["_files"])
    return sorted(merged.values(), key=lambda r: order.get(r["model"], 9))


def markdown(records: list[dict]) -> str:
    lines = []
    for record in records:
        env, ceil, facts = record["environment"], record["ceilings"], record["model_facts"]
        lines += [
            f"### {record['model']} ({facts['parameters'] / 1e9:.2f}B parameters, random bf16 weights)",
            "",
            f"{env['gpu']}, torch {env['torch']}, transformers {env['transformers']}, "
            f"flash-attn {'yes' if env['flash_attn_available'] else 'not installed'}; measured bf16 "
            f"matmul {fmt(ceil['matmul_tflops'], '.0f')} TFLOP/s, device copy "
            f"{fmt(ceil['copy_gbps'], '.0f')} GB/s (read + write). {record['new_tokens']} new tokens, "
            f"{record['warmup']} warm-up + up to {record['repeats']} timed runs, medians. "
            f"Files: {record['_file']}.",
            "",
            "| length | method | TTFT s | prefill s | decode tok/s | peak GiB | prefill TFLOP/s (% matmul) "
            "| decode % of floor | chunks kept/total | runs | status |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for entry in record["results"]:
            m = entry.get("median") or {}
            rate = m.get("chunk_prefill_tflops") or m.get("prefill_tflops")
            share = m.get("prefill_fraction_of_matmul")
            stats = m.get("engine_stats") or {}
            chunks = f"{stats['chunks_kept']}/{stats['chunks_total']}" if stats else ""
            status = entry["status"]
            if entry.get("tried_to_allocate"):
                status += f" (tried to allocate {entry['tried_to_allocate']})"
            lines.append(
                f"| {length_label(entry['length'])} | {entry['method']} | {fmt(m.get('ttft_s'), '.3f')} "
                f"| {fmt(m.get('prefill_s'), '.3f')} | {fmt(m.get('decode_tok_s'), '.1f')} "
                f"| {fmt(m.get('peak_memory_bytes'), '.2f', 1 / GIB)} "
                f"| {fmt(rate, '.0f')} ({fmt(share, '.0f', 100)}%) "
                f"| {fmt(m.get('decode_fraction_of_floor'), '.0f', 100)}% | {chunks} "
                f"| {len(entry['trials'])} | {status} |"
            )
        stage_rows = [e for e in record["results"] if (e.get("median") or {}).get("stages_gpu_s")]
        if stage_rows:
            stages = [key for key in stage_rows[0]["median"]["stages_gpu_s"] if key != TOTAL]
            lines += [
                "",
                "ParallelComp time to first token by stage (GPU time between CUDA events, seconds):",
                "",
                "| length | method | rows per pass | "
                + " | ".join(key.removesuffix("_s").replace("_", " ") for key in stages)
                + " | total |",
                "|---:|---|---|" + "---:|" * (len(stages) + 1),
            ]
            for entry in stage_rows:
                seconds = entry["median"]["stages_gpu_s"]
                rows = entry["median"].get("rows_per_prefill_pass") or [
                    len(batch) for batch in entry["median"].get("batches", [])
                ]
                cells = " | ".join(fmt(seconds.get(key), ".3f") for key in stages)
                lines.append(
                    f"| {length_label(entry['length'])} | {entry['method']} "
                    f"| {'+'.join(map(str, rows))} | {cells} | {seconds[TOTAL]:.3f} |"
                )
        commands = sorted({e.get("_command") or record["command"] for e in record["results"]})
        commands = [re.sub(r"--out \S+", "--out benchmarks/results", c) for c in commands]
        lines += [
            "",
            "Reproduce (on the GPU machine, from the repo root): "
            + "; ".join(f"`{c}`" for c in commands),
            "",
        ]
    return "\n".join(lines)


def diagnosis(paths: list[str]) -> str:
    lines = []
    for path in sorted(paths):
        d = json.loads(Path(path).read_text())
        if "attention_path" not in d:
            continue
        lines += [
            f"### Diagnosis: {d['model']} on {d['gpu']} (`{Path(path).name}`)",
            "",
            f"Measured in that process: matmul {fmt(d['ceilings']['matmul_tflops'], '.0f')} TFLOP/s, "
            f"copy {fmt(d['ceilings']['copy_gbps'], '.0f')} GB/s.",
            "",
        ]
        a = d["attention_path"]
        if "error" not in a:
            lines += [
                f"Chunk-prefill forward, {a['rows']} rows x {a['row_tokens']} tokens "
                "(as `prefill_rows`: left padding, 2-D mask, positions from 0):",
                "",
                "| variant | seconds | TFLOP/s | % of matmul |",
                "|---|---:|---:|---:|",
            ]
            for name in (
                "equal_rows_mask_dropped",
                "one_row_1_token_shorter_masked",
                "equal_rows_no_mask",
            ):
                v = a[name]
                lines.append(
                    f"| {name} | {v['seconds']:.3f} | {v['tflops']:.0f} "
                    f"| {fmt(v['fraction_of_matmul'], '.0f', 100)}% |"
                )
            lines.append("")
        if d.get("first_call"):
            f = d["first_call"]
            lines += [
                f"Engine requests at {length_label(f['length'])}, first three calls of the process "
                "(wall / TTFT / decode seconds): "
                + "; ".join(
                    f"{c['wall_s']:.2f} / {c['ttft_s']:.3f} / {c['decode_s']:.2f}"
                    for c in f["calls"]
                ),
                "",
            ]
        b = d.get("decode_busy") or {}
        if "wall_ms_per_token" in b:
            lines += [
                f"Eager decode step over {b['kv_tokens']} cached tokens: {b['wall_ms_per_token']:.1f} ms "
                f"wall per token; profiler self-device sum {b['gpu_kernel_ms_per_token']:.1f} ms per token "
                "(this sum counts each kernel under its aten op and again as a kernel row, so GPU "
                f"time is about half of it); bandwidth floor {b['floor_ms_per_token']:.2f} ms.",
                "",
            ]
        if d.get("profile", {}).get("top"):
            lines += [
                f"torch.profiler, one ParallelComp request of {d['profile']['context_tokens']} tokens, "
                f"{d['profile']['new_tokens']} new tokens (self device ms, top rows; "
                f"full table `{d['profile']['table_file']}`):",
                "",
                "| self device ms | calls | name |",
                "|---:|---:|---|",
            ]
            for row in d["profile"]["top"][:20]:
                lines.append(
                    f"| {row['self_device_ms']:.1f} | {row['calls']} | `{row['name'][:90]}` |"
                )
            lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(records), 3, figsize=(16, 4.5 * len(records)), squeeze=False)
    for row, record in enumerate(records):
        methods = []
        for entry in record["results"]:
            if entry["method"] not in methods:
                methods.append(entry["method"])
        for method in methods:
            entries = [e for e in record["results"] if e["method"] == method and e.get("median")]
            if not entries:
                continue
            xs = [e["length"] / 1024 for e in entries]
            style = dict(marker="o", label=method)
            axes[row][0].plot(xs, [e["median"]["ttft_s"] for e in entries], **style)
            axes[row][1].plot(xs, [e["median"]["decode_tok_s"] for e in entries], **style)
            axes[row][2].plot(
                xs, [(e["median"]["peak_memory_bytes"] or 0) / GIB for e in entries], **style
            )
            failed = [
                e for e in record["results"] if e["method"] == method and e["status"] == "oom"
            ]
            for e in failed:
                axes[row][2].plot([e["length"] / 1024], [0], marker="x", color="red", markersize=10)
        titles = ("time to first token (s)", "decode tokens/s (128 new)", "peak GPU memory (GiB)")
        for col, title in enumerate(titles):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ticks = sorted({e["length"] / 1024 for e in record["results"]})
            ax.set_xticks(ticks, [f"{t:g}K" for t in ticks])
            ax.set_ylim(bottom=0)
            ax.set_xlabel("context tokens (K)")
            ax.set_title(f"{record['model']}: {title}")
            ax.grid(True, alpha=0.3)
            ax.legend()
        if record["environment"].get("gpu_memory_bytes"):
            axes[row][2].axhline(
                record["environment"]["gpu_memory_bytes"] / GIB, color="gray", ls="--", lw=1
            )
    fig.suptitle(f"ParallelComp vs full attention, {records[0]['environment']['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+")
    parser.add_argument("--md", default="benchmarks/results/speed.md")
    parser.add_argument("--png", default="benchmarks/results/speed.png")
    args = parser.parse_args()
    records = load([f for f in args.files if "diagnose_" not in Path(f).name])
    text = (
        markdown(records) + "\n" + diagnosis([f for f in args.files if "diagnose_" in Path(f).name])
    )
    Path(args.md).write_text(text)
    plot(records, args.png)
    print(Path(args.md).read_text())


if __name__ == "__main__":
    main()
