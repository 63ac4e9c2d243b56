"""The three distributions as users get them: wheels built from a copy of the sources (no network:
setuptools of this environment) hold their package, its `py.typed` marker and the license, and
nothing else; installed into a fresh virtual environment, run from outside the checkout, they
import with their versions and the `parallelcomp` command works."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import parallelcomp_llm
from parallelcomp_llm.haystack import PASSKEY_QUESTION, random_key
from parallelcomp_llm.testing import first_integer, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
VERSION = parallelcomp_llm.__version__
# Wheel name -> (distribution folder under the repository root, package folder in the wheel).
DISTRIBUTIONS = {
    "parallelcomp_llm": (".", "parallelcomp_llm"),
    "langchain_parallelcomp": ("integrations/langchain", "langchain_parallelcomp"),
    "llama_index_llms_parallelcomp": ("integrations/llama_index", "llama_index/llms/parallelcomp"),
}
# This environment's site-packages, where the fresh one finds torch, transformers and the rest.
DEPENDENCIES = list(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))
# https://www.apache.org/licenses/LICENSE-2.0.txt, the project's license, word for word.
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
# Each integration: the core's minor series, and its framework below the next breaking release.
PINS = {
    "langchain_parallelcomp": {
        "parallelcomp-llm": ("0.2.0", "0.3"),
        "langchain-core": ("1.8.3", "2"),
    },
    "llama_index_llms_parallelcomp": {
        "parallelcomp-llm": ("0.2.0", "0.3"),
        "llama-index-core": ("0.14.25", "0.15"),
    },
}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The three wheels, built with pip from a copy of the sources without local build output."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    skip = shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "dist")
    shutil.copytree(ROOT, source, ignore=skip)
    folders = [str(source / folder) for folder, _ in DISTRIBUTIONS.values()]
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--disable-pip-version-check", "--quiet", "-w", str(work / "wheels"), *folders]
    subprocess.run(command, check=True)
    return {name: work / "wheels" / f"{name}-{VERSION}-py3-none-any.whl" for name in DISTRIBUTIONS}


@pytest.fixture(scope="module")
def venv(wheels, tmp_path_factory) -> Path:
    """A fresh virtual environment with the three wheels installed, and this environment's
    site-packages (torch, transformers, ...; its editable finders are not run) for their
    dependencies."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    install += ["--no-index", "--disable-pip-version-check", "--quiet", *map(str, wheels.values())]
    subprocess.run(install, check=True)
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "dependencies.pth").write_text("".join(f"{path}\n" for path in DEPENDENCIES))
    return folder


def run_in(venv: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess:
    """`command` with the fresh environment's bin first on PATH, from `cwd`, no PYTHONPATH."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["PATH"] = f"{venv / 'bin'}{os.pathsep}{environment['PATH']}"
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, check=True
    )


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_wheel_holds_its_package_the_marker_and_the_license(name, wheels):
    package = DISTRIBUTIONS[name][1]
    info = f"{name}-{VERSION}.dist-info"
    with zipfile.ZipFile(wheels[name]) as wheel:
        files = wheel.namelist()
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        license_text = wheel.read(f"{info}/licenses/LICENSE")
    assert [f for f in files if not f.startswith((f"{package}/", f"{info}/"))] == []
    assert f"{package}/py.typed" in files and f"{package}/__init__.py" in files
    assert [f for f in files if {"tests", "__pycache__"} & set(f.split("/"))] == []
    assert [f for f in files if ".egg-info" in f] == []
    assert hashlib.sha256(license_text).hexdigest() == APACHE_2_0_SHA256
    assert metadata["Version"] == VERSION and metadata["License-Expression"] == "Apache-2.0"
    requirements = {
        r.name: r.specifier for r in map(Requirement, metadata.get_all("Requires-Dist"))
    }
    for dependency, (allowed, refused) in PINS.get(name, {}).items():
        assert allowed in requirements[dependency] and refused not in requirements[dependency]


def test_installed_wheels_import_with_versions_and_markers(venv, tmp_path):
    check = (
        "import json, sys, parallelcomp_llm, langchain_parallelcomp\n"
        "import llama_index.llms.parallelcomp as llama\n"
        "modules = (parallelcomp_llm, langchain_parallelcomp, llama)\n"
        "print(json.dumps({'modules': [[m.__version__, m.__file__] for m in modules],"
        " 'path': sys.path}))\n"
    )
    found = json.loads(run_in(venv, tmp_path, "python", "-c", check).stdout)
    for version, file in found["modules"]:
        assert version == VERSION and Path(file).is_relative_to(venv)
        assert Path(file).with_name("py.typed").is_file()
    checkout = [entry for entry in found["path"] if Path(entry).is_relative_to(ROOT)]
    assert set(checkout) <= set(DEPENDENCIES)  # this environment's site-packages, if inside


def test_installed_command_writes_a_haystack(venv, tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    done = run_in(
        venv, tmp_path, "parallelcomp", "haystack", "--tokens", "3000", "--model", "tokenizer"
    )
    assert abs(len(done.stdout.encode()) - 3000) < 100  # one byte, one token
    assert f"The pass key is {random_key(0)}." in done.stdout
    assert done.stderr == f"parallelcomp: pass key {random_key(0)} at depth 0.5\n"


@pytest.mark.default_model
def test_installed_command_answers_its_haystack(venv, tmp_path):
    haystack = run_in(venv, tmp_path, "parallelcomp", "haystack", "--tokens", "3000").stdout
    (tmp_path / "haystack.txt").write_text(haystack, encoding="utf-8")
    ask = ["parallelcomp", "ask", "--context", "haystack.txt", "--max-new-tokens", "16"]
    answer = run_in(venv, tmp_path, *ask, PASSKEY_QUESTION)
    assert first_integer(answer.stdout) == random_key(0)
