"""The LlamaIndex quick-start snippet of this package's README and of the project README runs as
written, with the default model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parallelcomp_llm.testing import first_integer, readme_snippet

HERE = Path(__file__).resolve()
READMES = [HERE.parents[1] / "README.md", HERE.parents[3] / "README.md"]


@pytest.mark.default_model
@pytest.mark.parametrize("readme", READMES, ids=["package", "project"])
def test_readme_quick_start_runs(tmp_path, readme):
    script = tmp_path / "quick_start.py"
    script.write_text(readme_snippet(readme, "llama-index-quick-start"), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    answer, *sources = run.stdout.strip().splitlines()
    assert first_integer(answer) == 41307
    assert len(sources) == 3  # three small documents: one chunk, kept, all of the relevance
    assert all(line.endswith(" 1.0") for line in sources)
