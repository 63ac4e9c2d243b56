"""Answering one item with one method in a worker process, as one result record."""

from __future__ import annotations

import datetime
import gc
import time
from pathlib import Path

import torch
import transformers

from parallelcomp_llm import ParallelCompError

from ..records import git_revision, hardware, source_digest
from .items import Item, Method, MethodOutput, score
from .methods import make_method

COST_FIELDS = [name for name in MethodOutput.__dataclass_fields__ if name != "text"]
_settings: dict = {}
_loaded: dict[str, Method] = {}


def start_worker(model: str | Path, device: str, memory_fraction: float | None) -> None:
    """Remember the model and device for this process; cap its share of the GPU's memory when
    several workers share one GPU, so an out-of-memory stays inside one worker."""
    _settings.update(model=str(model), device=device)
    transformers.utils.logging.disable_progress_bar()
    if memory_fraction is not None and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(memory_fraction)


def _method(name: str) -> Method:
    """The method `name`, loaded once per process and kept: items go item by item, every method
    on each (a 135M model takes about 0.3 GB a copy in bf16)."""
    if name not in _loaded:
        _loaded[name] = make_method(name, _settings["model"], device=_settings["device"])
    return _loaded[name]


def answer_item(method_name: str, item: Item) -> dict:
    """The result record of `method_name` on `item`. Running out of memory and the package's own
    errors are recorded (score 0) instead of raised; anything else is a bug and raises."""
    method = _method(method_name)
    started = time.perf_counter()
    output, error = None, None
    try:
        output = method.answer(item)
    except (torch.OutOfMemoryError, ParallelCompError) as caught:
        error = f"{type(caught).__name__}: {str(caught)[:300]}"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    value = score(item, output.text) if output else 0.0
    return {
        "suite": item.suite,
        "task": item.task,
        "length": item.length,
        "seed": item.seed,
        "index": item.index,
        "depth": item.depth,
        "method": method_name,
        "score": value,
        "correct": value == 1.0,
        "answer": output.text if output else None,
        "references": list(item.references),
        **(output.costs() if output else dict.fromkeys(COST_FIELDS)),
        "seconds": round(time.perf_counter() - started, 3),
        "error": error,
        "model": Path(_settings["model"]).name,
        "hardware": hardware(),
        "git": git_revision(),
        "source_sha256": source_digest(),
        "engine": method.engine.describe(),
        "torch": torch.__version__,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
