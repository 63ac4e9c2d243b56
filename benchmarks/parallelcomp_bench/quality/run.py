"""Run the quality evaluation: every item of a suite answered by every chosen method, one result
record per (item, method) appended to a JSON-lines file under `benchmarks/results/`.

    python -m parallelcomp_bench.quality.run --suite passkey --lengths 4096 8192 16384 --depths 11
    python -m parallelcomp_bench.quality.run --suite ruler --lengths 4096 16384 --items 10 \\
        --workers 4 --build-processes 8
    python -m parallelcomp_bench.quality.run --suite needle --lengths 4096 32768 --depths 11 \\
        --methods parallelcomp full
    python -m parallelcomp_bench.quality.run --suite passkey --lengths 32768 \\
        --model qwen2.5-coder-0.5b

Items go item by item, every method on each, in rounds (item 0 of every task and length, then
item 1, ...), so a run stopped early (`--time-budget`, or interrupted) still compares the
methods on identical items at every length. Rerunning the same command resumes: results already
in the file are skipped, and only the items still to answer are built.
`python -m parallelcomp_bench.quality.report` makes the tables and plots.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from .. import RESULTS_DIR
from .eval_models import EVAL_MODELS, model_folder
from .items import Item
from .methods import METHOD_NAMES, parse_method
from .results import append_record, done_keys, item_key, record_key
from .suites import SUITES, ItemGroup, build_items, item_groups
from .worker import answer_item, start_worker


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=SUITES, required=True)
    parser.add_argument("--lengths", type=int, nargs="+", required=True, help="in model tokens")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHOD_NAMES),
        help=f"of {', '.join(METHOD_NAMES)}; 'parallelcomp[key=value,...]' sets engine fields",
    )
    parser.add_argument("--items", type=int, default=10, help="items per RULER task and length")
    parser.add_argument("--tasks", nargs="+", default=None, help="RULER tasks (default: all 13)")
    parser.add_argument("--depths", type=int, default=11, help="needle depths, 0%% to 100%%")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model",
        default=None,
        help=f"one of {', '.join(EVAL_MODELS)} (default: smollm2-135m, the default model), or a "
        "model folder",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the device")
    parser.add_argument(
        "--build-processes", type=int, default=1, help="processes building the items (CPU)"
    )
    parser.add_argument(
        "--time-budget", type=float, default=None, help="stop starting items after this many s"
    )
    parser.add_argument("--results", type=Path, default=None, help="JSON-lines file to append to")
    args = parser.parse_args(argv)
    if min(args.items, args.depths, args.workers, args.build_processes, *args.lengths) < 1:
        parser.error(
            "--items, --depths, --workers, --build-processes and --lengths must be positive"
        )
    try:
        item_groups(args.suite, args.lengths, args.items, args.depths, args.tasks, args.seed)
    except ValueError as error:
        parser.error(str(error))
    for method in args.methods:
        try:
            parse_method(method)
        except ValueError as error:
            parser.error(str(error))
    return args


def run_jobs(
    jobs: list[tuple[str, Item]],
    results: Path,
    model: Path,
    device: str,
    workers: int,
    deadline: float | None,
) -> int:
    """Answer `jobs` (method, item) and append each record as it comes; return how many ran."""
    bar = tqdm(total=len(jobs), desc="items", unit="answer")
    finished = 0
    if workers == 1:
        start_worker(model, device, None)
        for method, item in jobs:
            if deadline is not None and time.monotonic() > deadline:
                break
            append_record(results, answer_item(method, item))
            finished += 1
            bar.update()
        bar.close()
        return finished
    context = multiprocessing.get_context("spawn")
    pending = iter(jobs)
    running: set[Future] = set()
    with ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=start_worker,
        initargs=(model, device, 0.9 / workers),
    ) as pool:
        while True:
            while len(running) < 2 * workers and (deadline is None or time.monotonic() < deadline):
                job = next(pending, None)
                if job is None:
                    break
                running.add(pool.submit(answer_item, *job))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                append_record(results, future.result())
                finished += 1
                bar.update()
    bar.close()
    return finished


def unanswered(groups: list[ItemGroup], methods: list[str], done: set[str]) -> list[ItemGroup]:
    """`groups` cut down to the items that some method in `methods` has not answered."""
    pending = []
    for group in groups:
        indices = tuple(
            index
            for index in group.indices
            if any(
                record_key(group.suite, group.task, group.length, group.seed, index, m) not in done
                for m in methods
            )
        )
        if indices:
            pending.append(replace(group, indices=indices))
    return pending


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    model = model_folder(args.model)
    started = time.monotonic()
    deadline = None if args.time_budget is None else started + args.time_budget
    results = args.results or RESULTS_DIR / f"quality_{args.suite}.jsonl"
    done = done_keys(results)
    groups = item_groups(args.suite, args.lengths, args.items, args.depths, args.tasks, args.seed)
    items = build_items(unanswered(groups, args.methods, done), model, args.build_processes)
    jobs = [(m, item) for item in items for m in args.methods if item_key(item, m) not in done]
    print(
        f"{sum(len(g.indices) for g in groups)} items x {len(args.methods)} methods: {len(jobs)} "
        f"to run ({len(done)} results already in {results}); {len(items)} items built in "
        f"{time.monotonic() - started:.0f} s"
    )
    finished = run_jobs(jobs, results, model, args.device, args.workers, deadline)
    print(f"{finished} of {len(jobs)} answered in {time.monotonic() - started:.0f} s")
    return results


if __name__ == "__main__":
    main()
