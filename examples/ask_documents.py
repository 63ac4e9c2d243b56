"""Answer a question over every text file of a folder with the default model, streaming the answer.

    python examples/ask_documents.py path/to/folder "What does the contract say about renewal?"

Each file is one document: small files are packed into one chunk, large ones split, and the
statistics show which documents the engine kept to answer.
"""

from __future__ import annotations

import sys
from pathlib import Path

from parallelcomp_llm import ParallelCompEngine


def main() -> None:
    folder, question = Path(sys.argv[1]), sys.argv[2]
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    engine = ParallelCompEngine.default()
    stream = engine.stream([p.read_text(encoding="utf-8") for p in files], question, progress=True)
    for delta in stream:
        print(delta, end="", flush=True)
    stats = stream.answer.stats
    print(
        f"\n\n{stats.context_tokens} context tokens in {stats.chunks_total} chunks; "
        f"kept {stats.chunks_kept}, prefill {stats.prefill_seconds:.1f} s"
    )
    print("documents used:", ", ".join(files[i].name for i in stats.kept_documents))


if __name__ == "__main__":
    main()
