"""What every result record says about where it came from: the code (git revision, and a digest
of the core package's source for machines without git), the software and the hardware. The
engine measured describes itself (`ParallelCompEngine.describe`: its resolved config and
stages)."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch
import transformers

import parallelcomp_llm

REVISION_ENV = "PARALLELCOMP_GIT_REVISION"
"""Set it to the revision measured where the working tree has no git history (a GPU machine
that gets a copy of the files)."""


@functools.cache
def source_digest() -> str:
    """sha256 over the core package's Python files (names and contents)."""
    digest = hashlib.sha256()
    root = Path(parallelcomp_llm.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.cache
def git_revision() -> dict[str, object]:
    """The commit of the checkout and whether it had changes; from `$PARALLELCOMP_GIT_REVISION`
    when set, None when neither is known."""
    if os.environ.get(REVISION_ENV):
        return {"commit": os.environ[REVISION_ENV], "dirty": None}
    root = Path(parallelcomp_llm.__file__).resolve().parents[1]

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *arguments], cwd=root, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def hardware() -> str:
    """The accelerator's name, or the CPU's."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}"


def provenance() -> dict[str, object]:
    """The code, software and hardware of a run."""
    return {
        "git": git_revision(),
        "source_sha256": source_digest(),
        "parallelcomp_llm": parallelcomp_llm.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "hardware": hardware(),
    }
