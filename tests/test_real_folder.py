"""A real folder with the default model: asked over the dpkg specifications Debian ships
(`/usr/share/doc/dpkg/spec`, about 12K tokens in four files), the engine that reads its
best-scored chunk again answers as the model does over the kept documents alone, and names the
variable the frontend specification gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from parallelcomp_llm import ParallelCompEngine

SPEC = Path("/usr/share/doc/dpkg/spec")
QUESTION = "Which environment variable should a frontend set when it invokes dpkg?"


@pytest.mark.default_model
def test_dpkg_specifications_answer_as_the_kept_documents_alone():
    files = sorted(SPEC.glob("*.txt"))
    if not any(path.name == "frontend-api.txt" for path in files):
        pytest.skip(f"{SPEC} lacks the dpkg specifications (Debian's dpkg package ships them)")
    documents = [path.read_text(encoding="utf-8") for path in files]
    engine = ParallelCompEngine.default(kept_chunks="reread", keep_chunks=1)
    answer = engine.generate(documents, QUESTION, max_new_tokens=32)
    kept = answer.stats.kept_documents
    assert answer.stats.reread and answer.stats.chunks_total > 1
    assert "frontend-api.txt" in [files[index].name for index in kept]
    alone = engine.generate([documents[index] for index in kept], QUESTION, max_new_tokens=32)
    assert alone.token_ids == answer.token_ids
    assert "DPKG_FRONTEND_LOCKED" in answer.text
