"""Passkey retrieval haystacks (Landmark / InfiniteBench recipe), sized in the model's own tokens.

    python -m benchmarks.passkey --tokens 32000 --depth 0.5 --key 68217 > haystack.txt

writes a haystack of about 32,000 tokens of the default model's tokenizer with the pass key at
50% depth; ask it "What is the pass key? Answer with the number only."
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important info there.\n\n"
)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? Answer with the number only."


def passkey_haystack(
    tokens: int, depth: float, key: int, count_tokens: Callable[[str], int]
) -> str:
    """A haystack of about `tokens` tokens with the needle for `key` at `depth` (0 to 1)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError("depth must be in [0, 1]")
    fixed = count_tokens(TASK) + count_tokens(NEEDLE.format(key=key))
    repeats = max(1, (tokens - fixed) * 100 // count_tokens(NOISE * 100))
    before = round(repeats * depth)
    return TASK + NOISE * before + NEEDLE.format(key=key) + NOISE * (repeats - before)


def first_integer(text: str) -> int | None:
    """The first run of digits in `text`, as an int (the passkey answer convention)."""
    digits = ""
    for character in text:
        if character.isdigit():
            digits += character
        elif digits:
            break
    return int(digits) if digits else None


def random_key(seed: int) -> int:
    return random.Random(seed).randint(10_000, 99_999)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=32_000)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--key", type=int, default=None, help="default: drawn from --seed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from parallelcomp_llm.default_model import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    key = args.key if args.key is not None else random_key(args.seed)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    print(passkey_haystack(args.tokens, args.depth, key, count), end="")


if __name__ == "__main__":
    main()
