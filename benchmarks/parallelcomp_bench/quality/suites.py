"""The item sets by suite: RULER's 13 tasks, the passkey grid and the needle-in-essays grid,
grouped by task and length, and built in worker processes when there are many."""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from parallelcomp_llm.testing import PASSKEY_QUESTION, passkey_haystack

from .items import Item
from .ruler import TASKS, EngineSizer, PromptSizer, needle_item, ruler_items

SUITES = ("ruler", "passkey", "needle")
PASSKEY_NEW_TOKENS = 16


def depth_grid(depths: int) -> list[float]:
    """`depths` needle depths evenly from 0% to 100% (one: 50%)."""
    return [0.5] if depths == 1 else [i / (depths - 1) for i in range(depths)]


def passkey_item(length: int, depth: float, seed: int, index: int, sizer: PromptSizer) -> Item:
    """The passkey at `depth` of a `length`-token prompt; the key is drawn from (seed, length,
    index)."""
    budget = length - sizer.overhead(PASSKEY_QUESTION) - PASSKEY_NEW_TOKENS
    key = random.Random(f"{seed}/passkey/{length}/{index}").randint(10_000, 99_999)
    return Item(
        suite="passkey",
        task="passkey",
        length=length,
        seed=seed,
        index=index,
        context=passkey_haystack(budget, depth, key, sizer.count),
        question=PASSKEY_QUESTION,
        references=(str(key),),
        match="first_integer",
        max_new_tokens=PASSKEY_NEW_TOKENS,
        depth=depth,
    )


@dataclass(frozen=True)
class ItemGroup:
    """Some items of one task at one length, by index: RULER items 0, 1, ..., or the cells of a
    depth grid of `depths` depths (index i at depth `depth_grid(depths)[i]`)."""

    suite: str
    task: str
    length: int
    seed: int
    indices: tuple[int, ...]
    depths: int = 1

    def build(self, sizer: PromptSizer) -> list[Item]:
        """The group's items, in index order."""
        if self.suite == "ruler":
            return ruler_items(self.task, self.length, self.indices, self.seed, sizer)
        make = passkey_item if self.suite == "passkey" else needle_item
        grid = depth_grid(self.depths)
        return [make(self.length, grid[i], self.seed, i, sizer) for i in self.indices]


def item_groups(
    suite: str,
    lengths: Sequence[int],
    count: int,
    depths: int,
    tasks: Sequence[str] | None,
    seed: int,
) -> list[ItemGroup]:
    """Every item of `suite` as groups by length and task: `count` items of each RULER task, or
    one item per depth of the passkey and needle grids."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    if suite != "ruler":
        return [ItemGroup(suite, suite, n, seed, tuple(range(depths)), depths) for n in lengths]
    unknown = sorted(set(tasks or ()) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown RULER tasks {unknown}; choose from {', '.join(TASKS)}")
    indices = tuple(range(count))
    return [ItemGroup(suite, t, n, seed, indices) for n in lengths for t in (tasks or TASKS)]


def in_rounds(groups: Iterable[Sequence[Item]]) -> list[Item]:
    """Item 0 of every group, then item 1, ...: a run stopped early covers every group."""
    return sorted((item for group in groups for item in group), key=lambda item: item.index)


_sizer: list[EngineSizer] = []


def _load_sizer(model: str) -> None:
    from transformers import AutoTokenizer

    _sizer[:] = [EngineSizer.for_tokenizer(AutoTokenizer.from_pretrained(model))]


def _build(group: ItemGroup) -> list[Item]:
    return group.build(_sizer[0])


def build_items(groups: Sequence[ItemGroup], model: str | Path, processes: int = 1) -> list[Item]:
    """The items of `groups`, sized with the tokenizer in the folder `model`, in the order a run
    answers them; built in up to `processes` worker processes, a group each."""
    processes = min(processes, len(groups))
    if processes <= 1:
        _load_sizer(str(model))
        return in_rounds(_build(group) for group in groups)
    # The longest groups start first, so that no long group is left alone at the end.
    order = sorted(range(len(groups)), key=lambda i: -groups[i].length * len(groups[i].indices))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        processes, mp_context=context, initializer=_load_sizer, initargs=(str(model),)
    ) as pool:
        built = dict(zip(order, pool.map(_build, [groups[i] for i in order]), strict=True))
    return in_rounds(built[i] for i in range(len(groups)))
