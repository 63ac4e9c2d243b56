"""Where the question's attention falls, layer by layer: for tuning a scorer that reads only the
first layers of the question pass.

For each item of a suite, the engine (its default settings) answers through a scorer that scores
as `nll` does and records, for every chunk, the `nll` relevance and, per layer and KV head, the
question's attention on the chunk's context (its mass, and its largest entry), observed over the
whole question block and, by a second engine, over its last `LAST_TOKENS` tokens. The chunks
that hold a reference (the needle's value, the pass key, an answer) are the gold ones. One JSON
line per item goes to `--out`; `--report` then ranks ways of scoring from those records (the
layers read, the statistic, how heads are pooled) by how many gold chunks they keep among the
`--keep` best, beside `nll`:

    python -m parallelcomp_bench.quality.scoring_probe --suite needle --lengths 16384 --depths 5 \\
        --out benchmarks/results/scoring_probe/probe_needle.jsonl
    python -m parallelcomp_bench.quality.scoring_probe --report \\
        benchmarks/results/scoring_probe/probe_*.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import PrivateAttr

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.stages import NllScorer, QuestionEvidence
from parallelcomp_llm.stages.selection import ObservationWindow

from .eval_models import model_folder
from .items import Item
from .suites import SUITES, build_items, item_groups

WHOLE_QUESTION = 4096
LAST_TOKENS = 16
WINDOWS = {"all": WHOLE_QUESTION, "last": LAST_TOKENS}
STATISTICS = tuple(f"{s}@{w}" for s in ("mass", "peak") for w in WINDOWS)
KEEP = 3


class AttentionRecorder(NllScorer):
    """`nll`, recording what each chunk shows: its relevance and, per layer (rows of the list)
    and KV head, the attention of the question's last `observation_window` tokens on its
    context (to 4 significant digits)."""

    observation_window: ObservationWindow = WHOLE_QUESTION
    _chunks: list[dict] = PrivateAttr(default_factory=list)

    def score(self, evidence: QuestionEvidence) -> torch.Tensor:
        relevance = super().score(evidence)
        attention = evidence.window_attention(self.observation_window)
        for row, context in enumerate(evidence.context):
            on_context = [
                scores[row, :, context].float() / attention.queries
                for _, scores in sorted(attention.scores.items())
            ]
            self._chunks.append(
                {
                    "tokens": context.stop - context.start,
                    "nll": float(relevance[row]),
                    "mass": [_rounded(s.sum(dim=-1)) for s in on_context],
                    "peak": [_rounded(s.max(dim=-1).values) for s in on_context],
                }
            )
        return relevance

    def taken(self) -> list[dict]:
        """The chunks recorded since the last call, in context order."""
        chunks, self._chunks = self._chunks, []
        return chunks


def _rounded(values: torch.Tensor) -> list[float]:
    return [float(f"{value:.4g}") for value in values.tolist()]


def gold_chunks(engine: ParallelCompEngine, item: Item, lengths: list[int]) -> list[int]:
    """The chunks (by index) whose context holds a reference of `item`, the context cut into
    chunks of `lengths` tokens in order."""
    tokenizer = engine.tokenizer
    encoded = tokenizer(item.context, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoded["input_ids"]) != sum(lengths):
        raise ValueError(f"{item.task}: chunks hold {sum(lengths)} of {len(encoded['input_ids'])}")
    ends = torch.tensor(lengths).cumsum(0)
    starts = [start for start, _ in encoded["offset_mapping"]]
    gold = set()
    for reference in item.references:
        at = item.context.find(reference)
        while at >= 0:
            token = max(i for i, start in enumerate(starts) if start <= at)
            gold.add(int(torch.searchsorted(ends, token, right=True)))
            at = item.context.find(reference, at + 1)
    return sorted(gold)


def probe(args: argparse.Namespace) -> None:
    folder = model_folder(args.model)
    config = ParallelCompConfig(
        device=args.device, context_cache_device_fraction=0.0, context_cache_host_fraction=0.0
    )
    recorders = {name: AttentionRecorder(observation_window=w) for name, w in WINDOWS.items()}
    engines = {
        name: ParallelCompEngine.from_pretrained(folder, config, scorer=recorder)
        for name, recorder in recorders.items()
    }
    groups = item_groups(args.suite, args.lengths, args.items, args.depths, args.tasks, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for item in build_items(groups, folder, args.build_processes):
        answers = {}
        for name, engine in engines.items():
            answers[name] = engine.generate(
                item.context, item.question, max_new_tokens=item.max_new_tokens
            ).text
        seen = {name: recorder.taken() for name, recorder in recorders.items()}
        chunks = [
            {
                "tokens": together["tokens"],
                "nll": together["nll"],
                **{
                    f"{statistic}@{name}": seen[name][index][statistic]
                    for name in WINDOWS
                    for statistic in ("mass", "peak")
                },
            }
            for index, together in enumerate(seen["all"])
        ]
        engine = engines["all"]
        record = {
            "suite": item.suite,
            "task": item.task,
            "length": item.length,
            "index": item.index,
            "match": item.match,
            "gold": gold_chunks(engine, item, [c["tokens"] for c in chunks]),
            "answer": answers["all"],
            "references": list(item.references),
            "chunks": chunks,
        }
        with out.open("a") as file:
            file.write(json.dumps(record) + "\n")
        print(item.task, item.length, item.index, "gold", record["gold"], flush=True)


def scores_of(chunks: list[dict], statistic: str, reach: int | tuple, pooling: str) -> list[float]:
    """Each chunk's score: `statistic` of one (layer, KV head) `reach` (`pooling` "head"), or of
    every KV head of the first `reach` layers, pooled over them by `pooling` ("mean", "max", or
    "log": the mean of the logs, as the `heads` scorer pools its heads)."""
    if pooling == "head":
        layer, head = reach
        return [math.log(max(chunk[statistic][layer][head], 1e-12)) for chunk in chunks]
    scores = []
    for chunk in chunks:
        values = [v for layer in chunk[statistic][:reach] for v in layer]
        if pooling == "max":
            scores.append(max(values))
        elif pooling == "log":
            scores.append(sum(math.log(max(v, 1e-12)) for v in values) / len(values))
        else:
            scores.append(sum(values) / len(values))
    return scores


def kept_share(scores: list[float], gold: list[int], match: str, keep: int) -> float:
    """The share of gold chunks among the `keep` best-scored (for "any": 1 if one is)."""
    best = set(sorted(range(len(scores)), key=lambda i: -scores[i])[:keep])
    found = [index in best for index in gold]
    return float(any(found)) if match == "any" else sum(found) / len(found)


def report(paths: Sequence[str], keep: int, top: int) -> None:
    """The `top` ways of scoring by their mean over suites and RULER tasks of the share of gold
    chunks kept: `nll`, every statistic over the first layers, and every single KV head."""
    records = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines()]
    records = [r for r in records if r["gold"] and len(r["chunks"]) > keep]
    first = records[0]["chunks"][0][STATISTICS[0]]
    layers, kv_heads = len(first), len(first[0])
    ways: list[tuple] = [("nll", layers, "")]
    ways += [
        (statistic, depth, pooling)
        for statistic in STATISTICS
        for depth in (2, 4, 6, 8, 10, 12, 16, 20, layers)
        for pooling in ("mean", "max", "log")
    ]
    ways += [
        (statistic, (layer, head), "head")
        for statistic in STATISTICS
        for layer in range(layers)
        for head in range(kv_heads)
    ]
    by_way: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        group = record["suite"] if record["suite"] != "ruler" else record["task"]
        for statistic, reach, pooling in ways:
            if statistic == "nll":
                scores = [c["nll"] for c in record["chunks"]]
            else:
                scores = scores_of(record["chunks"], statistic, reach, pooling)
            share = kept_share(scores, record["gold"], record["match"], keep)
            by_way[(statistic, reach, pooling)][group].append(share)
    groups = sorted({g for shares in by_way.values() for g in shares})
    lengths = sorted({r["length"] for r in records})
    print(f"{len(records)} items at {lengths} tokens; the share of gold chunks among the {keep}")
    print("best, by suite or RULER task, and their mean; a way is statistic:reach:pooling")
    print("way".ljust(24), "mean".rjust(6), *(g.removeprefix("niah_").rjust(11) for g in groups))
    rows = []
    for way, shares in by_way.items():
        means = [sum(shares[g]) / len(shares[g]) for g in groups]
        rows.append((sum(means) / len(means), str(way), way, means))
    for mean, _, (statistic, reach, pooling), means in sorted(rows, reverse=True)[:top]:
        reach = "/".join(map(str, reach)) if isinstance(reach, tuple) else reach
        print(
            f"{statistic}:{reach}:{pooling}".ljust(24),
            f"{mean:6.3f}",
            *(f"{m:11.2f}" for m in means),
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=SUITES)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384])
    parser.add_argument("--items", type=int, default=3, help="items per RULER task and length")
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--depths", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--build-processes", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/scoring_probe/probe.jsonl")
    parser.add_argument("--report", nargs="+", default=None, help="probe files to rank from")
    parser.add_argument("--keep", type=int, default=KEEP)
    parser.add_argument("--top", type=int, default=40, help="ways to list")
    args = parser.parse_args(argv)
    if args.report:
        report(args.report, args.keep, args.top)
    else:
        probe(args)


if __name__ == "__main__":
    main()
