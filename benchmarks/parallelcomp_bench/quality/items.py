"""Evaluation items (a context, a question, the references), method outputs, and scoring."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from parallelcomp_llm.testing import first_integer

if TYPE_CHECKING:
    from parallelcomp_llm import ParallelCompEngine

Match = Literal["all", "any", "first_integer"]


@dataclass(frozen=True)
class Item:
    """One question over one long context, sized to `length` tokens of the target model.

    `length` counts the whole prompt (template, context, question) plus `max_new_tokens`, as
    RULER does. `references` are scored by `match`: "all" (RULER's string_match_all: the share of
    references found in the answer), "any" (string_match_part: 1 if any is found) or
    "first_integer" (the first integer of the answer equals the only reference).
    """

    suite: str
    task: str
    length: int
    seed: int
    index: int
    context: str
    question: str
    references: tuple[str, ...]
    match: Match
    max_new_tokens: int
    depth: float | None = None


@dataclass(frozen=True)
class MethodOutput:
    """What a method answered and what it cost.

    `kv_kept` counts the KV entries per layer and KV head that the answer was decoded over;
    `chunks_kept` / `chunks_total` are None for methods without chunks.
    """

    text: str
    prompt_tokens: int
    prefill_seconds: float
    peak_memory_bytes: int
    kv_kept: int
    chunks_kept: int | None = None
    chunks_total: int | None = None

    def costs(self) -> dict:
        """Every field but the text, for a result record."""
        return {name: value for name, value in asdict(self).items() if name != "text"}


class Method(Protocol):
    """A way of answering items; `answer` must not raise for an item that is merely too long.
    `engine` is the engine whose model, prompt and settings the method uses (recorded with its
    results)."""

    name: str
    engine: ParallelCompEngine

    def answer(self, item: Item) -> MethodOutput: ...


def score(item: Item, answer: str) -> float:
    """The item's score in [0, 1] for `answer` (case-insensitive substring match)."""
    text = answer.lower()
    if item.match == "first_integer":
        return float(first_integer(answer) == int(item.references[0]))
    hits = [reference.lower() in text for reference in item.references]
    if item.match == "any":
        return float(any(hits))
    return sum(hits) / len(hits)
