"""The item sets by suite: RULER's 13 tasks, the passkey grid and the needle-in-essays grid."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..passkey import QUESTION, passkey_haystack
from .items import Item
from .ruler import TASKS, PromptSizer, needle_item, ruler_items

SUITES = ("ruler", "passkey", "needle")
PASSKEY_NEW_TOKENS = 16


def depth_grid(depths: int) -> list[float]:
    """`depths` needle depths evenly from 0% to 100% (one: 50%)."""
    return [0.5] if depths == 1 else [i / (depths - 1) for i in range(depths)]


def passkey_items(lengths: Sequence[int], depths: int, seed: int, sizer: PromptSizer) -> list[Item]:
    """One passkey item per (length, depth); the key is drawn from (seed, length, depth index)."""
    items = []
    for length in lengths:
        budget = length - sizer.overhead(QUESTION) - PASSKEY_NEW_TOKENS
        for index, depth in enumerate(depth_grid(depths)):
            key = random.Random(f"{seed}/passkey/{length}/{index}").randint(10_000, 99_999)
            items.append(
                Item(
                    suite="passkey",
                    task="passkey",
                    length=length,
                    seed=seed,
                    index=index,
                    context=passkey_haystack(budget, depth, key, sizer.count),
                    question=QUESTION,
                    references=(str(key),),
                    match="first_integer",
                    max_new_tokens=PASSKEY_NEW_TOKENS,
                    depth=depth,
                )
            )
    return items


def needle_items(lengths: Sequence[int], depths: int, seed: int, sizer: PromptSizer) -> list[Item]:
    """One needle-in-the-essays item per (length, depth): the heat-map grid."""
    return [
        needle_item(length, depth, seed, index, sizer)
        for length in lengths
        for index, depth in enumerate(depth_grid(depths))
    ]


def in_rounds(groups: Sequence[Sequence[Item]]) -> list[Item]:
    """Item 0 of every group, then item 1, ...: a run stopped early covers every group."""
    rounds = max((len(g) for g in groups), default=0)
    return [g[i] for i in range(rounds) for g in groups if i < len(g)]


def build_items(
    suite: str,
    lengths: Sequence[int],
    count: int,
    depths: int,
    tasks: Sequence[str] | None,
    seed: int,
    sizer: PromptSizer,
) -> list[Item]:
    """The items of `suite`, in the order a run answers them."""
    if suite == "passkey":
        return in_rounds([passkey_items([n], depths, seed, sizer) for n in lengths])
    if suite == "needle":
        return in_rounds([needle_items([n], depths, seed, sizer) for n in lengths])
    unknown = sorted(set(tasks or ()) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown RULER tasks {unknown}; choose from {', '.join(TASKS)}")
    groups = [
        ruler_items(task, length, count, seed, sizer)
        for length in lengths
        for task in (tasks or TASKS)
    ]
    return in_rounds(groups)
