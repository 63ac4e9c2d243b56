"""The JSON-lines results files: one record per (item, method), read back to resume a run."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from .items import Item


def record_key(suite: str, task: str, length: int, seed: int, index: int, method: str) -> str:
    """The identity of one result: the item's key and the method."""
    return f"{suite}/{task}/{length}/{seed}/{index}/{method}"


def item_key(item: Item, method: str) -> str:
    return record_key(item.suite, item.task, item.length, item.seed, item.index, method)


def read_records(paths: Iterable[Path]) -> Iterator[dict]:
    """Every record of the given JSON-lines files (missing files are skipped)."""
    for path in paths:
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def done_keys(path: Path) -> set[str]:
    """Keys of the results already in `path`: those items are skipped when a run resumes."""
    return {
        record_key(r["suite"], r["task"], r["length"], r["seed"], r["index"], r["method"])
        for r in read_records([path])
    }


def append_record(path: Path, record: dict) -> None:
    """Append one record as one line, flushed at once so an interrupted run loses nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
