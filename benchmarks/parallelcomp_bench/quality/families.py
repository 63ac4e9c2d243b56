"""RULER by task family, long context against retrieval: `families.md` and `families.png`.

    python -m parallelcomp_bench.quality.families --results-dir benchmarks/results/rag \
        --methods parallelcomp rag-bm25 rag-bm25-1k rag-bm25-window

reads the `quality_ruler.jsonl` there and writes, for each length, every method's score per task
family (the mean of its tasks' mean scores), which method wins each family and by how many
points, and the methods' median time to first token (`prefill_seconds`: for the retrieval
methods, splitting, indexing and ranking a new corpus included) and peak memory. Needs
matplotlib.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .report import length_label, markdown_table
from .results import read_records

FAMILIES = {
    "single needle": ("niah_single_1", "niah_single_2", "niah_single_3"),
    "multi-key": ("niah_multikey_1", "niah_multikey_2", "niah_multikey_3"),
    "multi-value": ("niah_multivalue",),
    "multi-query": ("niah_multiquery",),
    "variable tracking": ("vt",),
    "aggregation": ("cwe", "fwe"),
    "single-hop QA": ("qa_1",),
    "two-hop QA": ("qa_2",),
}
"""RULER's 13 tasks grouped as the retrieval-or-long-context question asks about them."""


def family_scores(records: list[dict]) -> dict[tuple[str, int, str], float]:
    """(method, length, family) -> mean over the family's tasks of each task's mean score."""
    per_task: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in records:
        per_task[(r["method"], r["length"], r["task"])].append(r["score"])
    scores = {}
    for method, length in {(m, n) for m, n, _ in per_task}:
        for family, tasks in FAMILIES.items():
            if all(per_task[(method, length, t)] for t in tasks):
                means = [statistics.fmean(per_task[(method, length, t)]) for t in tasks]
                scores[(method, length, family)] = statistics.fmean(means)
    return scores


def markdown(records: list[dict], methods: list[str]) -> str:
    scores = family_scores(records)
    lengths = sorted({r["length"] for r in records})
    ran = {(r["method"], r["length"]) for r in records}
    lines = [
        "# RULER by task family: long context or retrieval?",
        "",
        f"Model: {', '.join(sorted({r['model'] for r in records}))}. Hardware: "
        f"{', '.join(sorted({r['hardware'] for r in records}))}. Made by `python -m "
        "parallelcomp_bench.quality.families` from `quality_ruler.jsonl` beside this file. "
        "Cells: score in percent (mean of the family's tasks); 'best' is the method with the "
        "highest score and its lead in points over the next one.",
    ]
    for length in lengths:
        present = [m for m in methods if any(r[:2] == (m, length) for r in ran)]
        rows = []
        for family in FAMILIES:
            cells = {m: scores.get((m, length, family)) for m in present}
            ranked = sorted((v, m) for m, v in cells.items() if v is not None)
            best = ""
            if len(ranked) > 1:
                lead = 100 * (ranked[-1][0] - ranked[-2][0])
                best = "tie" if lead == 0 else f"{ranked[-1][1]} (+{lead:.1f})"
            rows.append(
                [family] + ["–" if v is None else f"{100 * v:.1f}" for v in cells.values()] + [best]
            )
        lines += ["", f"## {length_label(length)}", ""]
        lines += markdown_table(["family", *present, "best"], rows)
    lines += [
        "",
        "## Costs (medians over RULER items)",
        "",
        "Loaded figures: six worker processes shared the GPU and the CPU built items meanwhile.",
        "",
    ]
    cells: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        if r["error"] is None and r["method"] in methods:
            cells[(r["method"], r["length"])].append(r)
    rows = [
        [
            method,
            length_label(length),
            str(len(group)),
            f"{statistics.median(r['prefill_seconds'] for r in group):.2f}",
            f"{statistics.median(r['peak_memory_bytes'] for r in group) / 2**30:.2f}",
            f"{statistics.median(r['prompt_tokens'] for r in group):.0f}",
        ]
        for (method, length), group in sorted(
            cells.items(), key=lambda kv: (methods.index(kv[0][0]), kv[0][1])
        )
    ]
    lines += markdown_table(
        ["method", "length", "n", "time to first token s", "peak GiB", "prompt tokens"], rows
    )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], methods: list[str], path: Path) -> None:
    """One panel per length: a bar per method in each family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = family_scores(records)
    lengths = sorted({r["length"] for r in records})
    figure, axes = plt.subplots(len(lengths), 1, figsize=(11, 3.2 * len(lengths)), squeeze=False)
    width = 0.8 / len(methods)
    for axis, length in zip(axes[:, 0], lengths, strict=True):
        for offset, method in enumerate(methods):
            values = [100 * scores.get((method, length, f), float("nan")) for f in FAMILIES]
            places = [i + offset * width for i in range(len(FAMILIES))]
            axis.bar(places, values, width, label=method)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(FAMILIES))], list(FAMILIES))
        axis.set_ylabel(f"{length_label(length)}: score %")
        axis.set_ylim(0, 100)
    axes[0, 0].legend(ncol=len(methods), fontsize="small")
    axes[0, 0].set_title("RULER by task family")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", required=True)
    arguments = parser.parse_args(argv)
    folder = arguments.results_dir
    records = [
        r
        for r in read_records([folder / "quality_ruler.jsonl"])
        if r["method"] in arguments.methods
    ]
    if not records:
        raise SystemExit(f"no RULER records of {arguments.methods} in {folder}")
    (folder / "families.md").write_text(markdown(records, arguments.methods), encoding="utf-8")
    plot(records, arguments.methods, folder / "families.png")
    print(folder / "families.md")


if __name__ == "__main__":
    main()
