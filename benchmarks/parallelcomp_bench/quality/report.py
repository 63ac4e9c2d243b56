"""Tables and plots from the quality results: `benchmarks/results/quality.md` and PNG figures.

    python -m parallelcomp_bench.quality.report [--results-dir benchmarks/results]

reads every `quality_*.jsonl` there and writes `quality.md` (accuracy by length per method for
each suite, RULER per task, the needle heat-map, costs, errors) and `quality_passkey.png`,
`quality_ruler.png`, `quality_needle.png`. Needs matplotlib. A cell shows the mean score in
percent (RULER's partial credit for several references) and, in brackets, how many items it
averages, so partly run grids stay honest.
"""

from __future__ import annotations

import argparse
import math
import statistics
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import RESULTS_DIR
from .methods import METHOD_NAMES
from .results import read_records

RETRIEVAL_PREFIXES = ("niah_", "vt")


def _ordered_methods(records: Iterable[dict]) -> list[str]:
    """Methods present, in `METHOD_NAMES` order, then tuning variants by name."""
    present = {r["method"] for r in records}
    return [m for m in METHOD_NAMES if m in present] + sorted(present - set(METHOD_NAMES))


def length_label(length: int) -> str:
    """A length in tokens as the tables write it: 16K for 16,384."""
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def _mean_cell(scores: Sequence[float]) -> str:
    return f"{100 * statistics.fmean(scores):.1f} ({len(scores)})" if scores else "–"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def accuracy_by_length(records: list[dict]) -> dict[str, dict[int, list[float]]]:
    """method -> length -> per-item scores."""
    table: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        table[r["method"]][r["length"]].append(r["score"])
    return table


def task_average(records: list[dict]) -> dict[str, dict[int, list[float]]]:
    """method -> length -> per-task mean scores (RULER's average over tasks)."""
    per_task: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in records:
        per_task[(r["method"], r["length"], r["task"])].append(r["score"])
    table: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (method, length, _), scores in sorted(per_task.items()):
        table[method][length].append(statistics.fmean(scores))
    return table


def _length_table(table: dict[str, dict[int, list[float]]], methods: list[str]) -> list[str]:
    lengths = sorted({length for m in methods for length in table[m]})
    rows = [[m] + [_mean_cell(table[m].get(length, [])) for length in lengths] for m in methods]
    return markdown_table(["method"] + [length_label(length) for length in lengths], rows)


def _cost_table(records: list[dict], methods: list[str]) -> list[str]:
    cells: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        if r["error"] is None:
            cells[(r["method"], r["length"])].append(r)
    rows = []
    for (method, length), group in sorted(
        cells.items(), key=lambda kv: (methods.index(kv[0][0]), kv[0][1])
    ):
        rows.append(
            [
                method,
                length_label(length),
                str(len(group)),
                f"{statistics.median(r['prefill_seconds'] for r in group):.2f}",
                f"{statistics.median(r['seconds'] for r in group):.2f}",
                f"{statistics.median(r['peak_memory_bytes'] for r in group) / 2**30:.2f}",
                f"{statistics.median(r['kv_kept'] for r in group):.0f}",
            ]
        )
    header = ["method", "length", "n", "prefill s", "item s", "peak GiB", "KV kept"]
    return markdown_table(header, rows)


def heat_map(records: list[dict], method: str) -> tuple[list[int], list[float], list[list[float]]]:
    """Lengths, depths and the mean score per (depth, length) of `method` (NaN where missing)."""
    mine = [r for r in records if r["method"] == method]
    lengths = sorted({r["length"] for r in mine})
    depths = sorted({r["depth"] for r in mine})
    cells: dict[tuple[float, int], list[float]] = defaultdict(list)
    for r in mine:
        cells[(r["depth"], r["length"])].append(r["score"])
    grid = [
        [statistics.fmean(cells[(d, n)]) if cells[(d, n)] else float("nan") for n in lengths]
        for d in depths
    ]
    return lengths, depths, grid


def markdown(by_suite: dict[str, list[dict]]) -> str:
    everything = [r for records in by_suite.values() for r in records]
    hardware = sorted({r["hardware"] for r in everything})
    models = sorted({r["model"] for r in everything})
    lines = [
        "# Long-context quality results",
        "",
        (
            f"Model: {', '.join(models)}. Hardware: {', '.join(hardware)}. "
            f"{len(everything)} answers. Made by `python -m parallelcomp_bench.quality.report` "
            "from the `quality_*.jsonl` files beside this one; the commands are in "
            "`benchmarks/parallelcomp_bench/quality/README.md` and the project README."
        ),
        "Cells: mean score in percent (items in brackets).",
    ]
    if "passkey" in by_suite:
        records = by_suite["passkey"]
        lines += ["", "## Passkey", ""]
        lines += _length_table(accuracy_by_length(records), _ordered_methods(records))
    if "ruler" in by_suite:
        records = by_suite["ruler"]
        methods = _ordered_methods(records)
        retrieval = [r for r in records if r["task"].startswith(RETRIEVAL_PREFIXES)]
        lines += ["", "## RULER: average over tasks (tasks in brackets)", ""]
        lines += _length_table(task_average(records), methods)
        lines += ["", "## RULER retrieval: NIAH and variable tracking (tasks in brackets)", ""]
        lines += _length_table(task_average(retrieval), methods)
        for length in sorted({r["length"] for r in records}):
            at_length = [r for r in records if r["length"] == length]
            tasks = sorted({r["task"] for r in at_length})
            scores: dict[tuple[str, str], list[float]] = defaultdict(list)
            for r in at_length:
                scores[(r["task"], r["method"])].append(r["score"])
            lines += ["", f"### RULER at {length_label(length)}: per task (items in brackets)", ""]
            rows = [[t] + [_mean_cell(scores[(t, m)]) for m in methods] for t in tasks]
            lines += markdown_table(["task"] + methods, rows)
    if "needle" in by_suite:
        records = by_suite["needle"]
        for method in _ordered_methods(records):
            lengths, depths, grid = heat_map(records, method)
            lines += ["", f"## Needle in the essays: {method} (rows: depth)", ""]
            rows = [
                [f"{depth:.0%}"] + ["–" if math.isnan(v) else f"{100 * v:.0f}" for v in row]
                for depth, row in zip(depths, grid, strict=True)
            ]
            lines += markdown_table(["depth"] + [length_label(n) for n in lengths], rows)
    lines += [
        "",
        "## Costs (medians over answered items of all suites)",
        "",
        "Seconds and memory come from runs with several worker processes sharing one device, so",
        "they are loaded figures. Peak memory is the worker's peak allocated memory during the",
        "item, including the weights of every method that worker had loaded by then (each",
        "method holds its own copy of the model): compare it within a method, across lengths.",
        "",
    ]
    lines += _cost_table(everything, _ordered_methods(everything))
    errors: dict[tuple[str, int, str], int] = defaultdict(int)
    for r in everything:
        if r["error"]:
            errors[(r["method"], r["length"], r["error"].split(":")[0])] += 1
    if errors:
        lines += ["", "## Errors (scored 0)", ""]
        rows = [[m, length_label(n), e, str(c)] for (m, n, e), c in sorted(errors.items())]
        lines += markdown_table(["method", "length", "error", "items"], rows)
    return "\n".join(lines) + "\n"


def _accuracy_plot(table: dict[str, dict[int, list[float]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for method in _ordered_methods({"method": m} for m in table):
        lengths = sorted(table[method])
        values = [100 * statistics.fmean(table[method][n]) for n in lengths]
        axes.plot(lengths, values, marker="o", label=method)
    axes.set_xscale("log", base=2)
    ticks = sorted({n for m in table for n in table[m]})
    axes.set_xticks(ticks, [length_label(n) for n in ticks])
    axes.set_ylim(-2, 102)
    axes.set_xlabel("context length (model tokens)")
    axes.set_ylabel("score (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _heat_map_plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = _ordered_methods(records)
    figure, axes = plt.subplots(
        1, len(methods), figsize=(4.5 * len(methods), 4), squeeze=False, layout="constrained"
    )
    for axis, method in zip(axes[0], methods, strict=True):
        lengths, depths, grid = heat_map(records, method)
        image = axis.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        axis.set_xticks(range(len(lengths)), [length_label(n) for n in lengths])
        axis.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        axis.set_xlabel("context length")
        axis.set_ylabel("needle depth")
        axis.set_title(textwrap.fill(method.replace(",", ", "), 34), fontsize=10)
    figure.colorbar(image, ax=axes[0].tolist(), label="score")
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results_dir: Path = RESULTS_DIR) -> Path:
    """Write `quality.md` and the PNG plots into `results_dir`; return the Markdown path."""
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for record in read_records(sorted(results_dir.glob("quality_*.jsonl"))):
        by_suite[record["suite"]].append(record)
    if not by_suite:
        raise SystemExit(f"no quality_*.jsonl results in {results_dir}")
    target = results_dir / "quality.md"
    target.write_text(markdown(by_suite), encoding="utf-8")
    if "passkey" in by_suite:
        table = accuracy_by_length(by_suite["passkey"])
        _accuracy_plot(table, "Passkey retrieval", results_dir / "quality_passkey.png")
    if "ruler" in by_suite:
        table = task_average(by_suite["ruler"])
        _accuracy_plot(table, "RULER, average over tasks", results_dir / "quality_ruler.png")
    if "needle" in by_suite:
        _heat_map_plot(by_suite["needle"], results_dir / "quality_needle.png")
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    print(write_report(parser.parse_args(argv).results_dir))


if __name__ == "__main__":
    main()
