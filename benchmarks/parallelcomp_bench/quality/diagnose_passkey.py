"""Which chunks ParallelComp keeps for one pass-key item, and what it answers: the 128K item at
depth 0% (the one cell the GPU run missed) on this machine, with optional engine settings.

    python -m parallelcomp_bench.quality.diagnose_passkey '{"kv_budget": null}'

Prints the key, the answer, the seconds, chunks total and kept, KV entries kept, then one line per
chunk: index, tokens, relevance (higher ranks higher), kept.
"""

from __future__ import annotations

import json
import sys
import time

from transformers import AutoTokenizer

from parallelcomp_llm import ParallelCompEngine
from parallelcomp_llm.default_model import default_model_path

from .ruler import EngineSizer
from .suites import passkey_item


def main(argv: list[str]) -> None:
    model = default_model_path()
    sizer = EngineSizer.for_tokenizer(AutoTokenizer.from_pretrained(model))
    item = passkey_item(131072, 0.0, 0, 0, sizer)
    print("key", item.references, flush=True)
    settings = json.loads(argv[0]) if argv else {}
    engine = ParallelCompEngine.from_pretrained(
        model, device="cpu", context_cache_host_fraction=0.0, **settings
    )
    started = time.time()
    answer = engine.generate(item.context, item.question, max_new_tokens=item.max_new_tokens)
    stats = answer.stats
    print(
        repr(answer.text),
        f"{time.time() - started:.0f} s",
        stats.chunks_total,
        stats.chunks_kept,
        stats.kv_entries_kept,
    )
    for index, chunk in enumerate(stats.chunks):
        print(index, chunk.tokens, round(chunk.relevance, 4), chunk.kept)


if __name__ == "__main__":
    main(sys.argv[1:])
