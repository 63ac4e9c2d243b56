"""The methods of the quality evaluation, by name: our engine (`parallelcomp`,
`parallelcomp-noevict`, `parallelcomp-merge`), the long-context baselines and the retrieval
baselines (`rag-bm25*`), each over its own `ParallelCompEngine` so that every method sees the
same model, device, dtype, attention kernel and prompt."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine

from .baselines import FullPromptMethod
from .device_costs import freeing_memory_on_failure
from .items import Item, Method, MethodOutput
from .retrieval import BUDGETS, RetrievalMethod
from .sink_window import SinkWindowMethod

# Every item is a new context: keeping encoded contexts for reuse would only hold memory (and
# count it in later items' peaks).
_NO_CONTEXT_REUSE = {"context_cache_device_fraction": 0.0, "context_cache_host_fraction": 0.0}
# parallel context windows: every chunk fills the room the trained window leaves, all are kept
_NO_EVICTION = {
    "chunk_room_fraction": 1.0,
    "keep_chunks": 1.0,
    "kv_budget": None,
    "calibration_layers": None,
}
# the paper's ParallelComp: the kept chunks' evicted KV merged (3 chunks, 1,024 entries each)
_MERGED = {"kept_chunks": "merge"}
# chunks scored by the default model's retrieval head (layer 17, KV head 1, the best single head
# of `scoring_probe` on passkey, needle and RULER items: benchmarks/results/scoring_probe/), the
# passes stopping after layer 17 of 30
_DEFAULT_MODEL_HEADS = {"chunk_scoring": "heads", "scoring_heads": [(17, 1)]}


class EngineMethod:
    """ParallelComp: the engine's own `generate`, with the settings the engine was built with."""

    def __init__(self, name: str, engine: ParallelCompEngine) -> None:
        self.name = name
        self.engine = engine

    def answer(self, item: Item) -> MethodOutput:
        with freeing_memory_on_failure(self.engine.device):
            answer = self.engine.generate(
                item.context, item.question, max_new_tokens=item.max_new_tokens
            )
        stats = answer.stats
        return MethodOutput(
            text=answer.text,
            prompt_tokens=stats.prompt_tokens,
            prefill_seconds=stats.prefill_seconds,
            peak_memory_bytes=stats.peak_memory_bytes,
            kv_kept=stats.kv_entries_kept,
            chunks_kept=stats.chunks_kept,
            chunks_total=stats.chunks_total,
        )


_Build = Callable[[str, ParallelCompEngine], Method]

# name -> (engine settings beyond the defaults, how the method is built on the engine)
_METHODS: dict[str, tuple[dict[str, Any], _Build]] = {
    "parallelcomp": ({}, EngineMethod),
    "parallelcomp-noevict": (_NO_EVICTION, EngineMethod),
    "parallelcomp-merge": (_MERGED, EngineMethod),
    "parallelcomp-heads": (_DEFAULT_MODEL_HEADS, EngineMethod),
    "full": ({}, FullPromptMethod),
    "truncate-middle": ({}, partial(FullPromptMethod, truncate=True)),
    "rope-linear": ({}, partial(FullPromptMethod, rope_type="linear")),
    "rope-ntk": ({}, partial(FullPromptMethod, rope_type="dynamic")),
    "rope-yarn": ({}, partial(FullPromptMethod, rope_type="yarn")),
    "sink-window": ({}, SinkWindowMethod),
    **{
        "rag-bm25" + ("" if budget == "kept" else f"-{budget}"): (
            {},
            partial(RetrievalMethod, budget=budget),
        )
        for budget in BUDGETS
    },
}

METHOD_NAMES: tuple[str, ...] = tuple(_METHODS)


def parse_method(name: str) -> tuple[str, dict[str, Any]]:
    """A method name and its engine settings: "parallelcomp[observation_window=32,keep_chunks=4]"
    is `parallelcomp` with those `ParallelCompConfig` fields (values as JSON, else strings), for
    tuning runs; plain names have no extra settings."""
    base, _, rest = name.partition("[")
    if base not in _METHODS or (rest and not rest.endswith("]")):
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHOD_NAMES)}")
    settings: dict[str, Any] = {}
    for pair in filter(None, rest[:-1].split(",")):
        key, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f"method setting {pair!r} in {name!r} is not key=value")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value.strip()
    return base, settings


def make_method(name: str, model: str | Path, *, device: str = "auto") -> Method:
    """The method called `name` (see `parse_method`) over the model in the folder `model`
    (safetensors and tokenizer), on `device` ("auto", "cpu", "cuda", "cuda:N")."""
    base, extra = parse_method(name)
    settings, build = _METHODS[base]
    config = ParallelCompConfig(device=device, **_NO_CONTEXT_REUSE, **(settings | extra))
    return build(name, ParallelCompEngine.from_pretrained(model, config))
