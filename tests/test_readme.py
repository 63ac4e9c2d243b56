"""The project README's Python snippet runs as written, on the real default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from parallelcomp_llm.testing import readme_snippet

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.default_model
def test_python_snippet_finds_the_pass_key(capsys):
    snippet = compile(readme_snippet(README, "python-quick-start"), str(README), "exec")
    exec(snippet, {})  # noqa: S102 - running the README is the point
    printed = capsys.readouterr().out
    first_line, streamed = printed.split("\n", 1)
    assert "71432" in first_line and first_line.endswith("[0, 1]")  # one chunk: both kept
    assert streamed.strip()
