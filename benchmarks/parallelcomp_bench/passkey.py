"""Write a pass-key haystack (Landmark / InfiniteBench recipe), sized in the default model's tokens.

    python -m parallelcomp_bench.passkey --tokens 32000 --depth 0.5 --key 68217 > haystack.txt

writes a haystack of about 32,000 tokens of the default model's tokenizer with the pass key at
50% depth; ask it "What is the pass key? Answer with the number only."
"""

from __future__ import annotations

import argparse
import random

from parallelcomp_llm.testing import passkey_haystack


def random_key(seed: int) -> int:
    """A five-digit pass key drawn from `seed`."""
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
