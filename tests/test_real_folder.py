"""A real folder with the default model: asked over the dpkg specifications Debian ships
(`/usr/share/doc/dpkg/spec`, about 12K tokens in four files), the engine that reads its
best-scored chunk again answers as the model does over the kept documents alone, and names the
variable the frontend specification gives; so does the default engine, which reads three small
chunks again."""

from __future__ import annotations

from pathlib import Path

import pytest

from parallelcomp_llm import ParallelCompEngine

SPEC = Path("/usr/share/doc/dpkg/spec")
QUESTION = "Which environment variable should a frontend set when it invokes dpkg?"


def specifications() -> tuple[list[Path], list[str]]:
    """The dpkg specification files and their texts (the test is skipped without them)."""
    files = sorted(SPEC.glob("*.txt"))
    if not any(path.name == "frontend-api.txt" for path in files):
        pytest.skip(f"{SPEC} lacks the dpkg specifications (Debian's dpkg package ships them)")
    return files, [path.read_text(encoding="utf-8") for path in files]


@pytest.mark.default_model
def test_dpkg_specifications_answer_as_the_kept_documents_alone():
    files, documents = specifications()
    engine = ParallelCompEngine.default(kept_chunks="reread", keep_chunks=1)
    answer = engine.generate(documents, QUESTION, max_new_tokens=32)
    kept = answer.stats.kept_documents
    assert answer.stats.reread and answer.stats.chunks_total > 1
    assert "frontend-api.txt" in [files[index].name for index in kept]
    alone = engine.generate([documents[index] for index in kept], QUESTION, max_new_tokens=32)
    assert alone.token_ids == answer.token_ids
    assert "DPKG_FRONTEND_LOCKED" in answer.text


@pytest.mark.default_model
def test_the_default_engine_reads_the_frontend_specification_and_names_its_variable():
    files, documents = specifications()
    answer = ParallelCompEngine.default().generate(documents, QUESTION, max_new_tokens=32)
    assert answer.stats.reread and answer.stats.chunks_kept == 3
    assert answer.stats.chunks_total > 3
    assert "frontend-api.txt" in [files[index].name for index in answer.stats.kept_documents]
    assert "DPKG_FRONTEND_LOCKED" in answer.text
