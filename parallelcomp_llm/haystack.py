"""The pass-key haystack (Landmark / InfiniteBench recipe): filler text with a five-digit key hidden
at a chosen depth, sized in a tokenizer's tokens. `parallelcomp haystack` prints one; the tests and
the benchmarks ask about it."""

from __future__ import annotations

import random
from collections.abc import Callable

from .errors import InvalidInputError

PASSKEY_TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important info there.\n\n"
)
PASSKEY_NOISE = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
PASSKEY_QUESTION = "What is the pass key? Answer with the number only."


def random_key(seed: int) -> int:
    """A five-digit pass key drawn from `seed`."""
    return random.Random(seed).randint(10_000, 99_999)


def passkey_haystack(
    tokens: int, depth: float, key: int, count_tokens: Callable[[str], int]
) -> str:
    """A haystack of about `tokens` tokens (as `count_tokens` counts them, at least the task, the
    needle and one filler line) with the pass key `key` at `depth` (0 to 1)."""
    if tokens < 1:
        raise InvalidInputError(f"tokens must be at least 1 (got {tokens})")
    if not 0.0 <= depth <= 1.0:
        raise InvalidInputError(f"depth must be in [0, 1] (got {depth})")
    fixed = count_tokens(PASSKEY_TASK) + count_tokens(PASSKEY_NEEDLE.format(key=key))
    repeats = max(1, (tokens - fixed) * 100 // count_tokens(PASSKEY_NOISE * 100))
    before = round(repeats * depth)
    return (
        PASSKEY_TASK
        + PASSKEY_NOISE * before
        + PASSKEY_NEEDLE.format(key=key)
        + PASSKEY_NOISE * (repeats - before)
    )
