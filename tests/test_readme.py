"""The project README runs as written: its quick start's commands and its Python snippet, on the
real default model."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from parallelcomp_llm.haystack import random_key
from parallelcomp_llm.testing import first_integer, readme_snippet

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def quick_start() -> list[str]:
    """The commands of the quick start's one `&&` line, in order."""
    found = re.search(
        r"## Quick start\n.*?```bash\n(.*?)\n```", README.read_text(encoding="utf-8"), re.DOTALL
    )
    assert found is not None, "README.md has no quick-start bash block"
    return found.group(1).split(" && ")


def test_quick_start_installs_what_ci_installs_then_runs_only_parallelcomp():
    install_torch, install_project, *commands = quick_start()
    assert install_torch == "pip install torch==2.13.0"
    assert " torch==2.13.0\n" in (ROOT / ".ci" / "run").read_text()  # the build CI tests
    pip, install, *arguments = shlex.split(install_project)
    assert (pip, install) == ("pip", "install")
    assert arguments[::2] == ["-e"] * len(arguments[1::2])
    for target in arguments[1::2]:
        assert (ROOT / target.split("[")[0] / "pyproject.toml").is_file()
    ci_install = next(
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if " -e " in line
    )
    assert arguments == shlex.split(ci_install)[-len(arguments) :]  # what CI tests
    assert commands[0] == "parallelcomp haystack --tokens 32000 > haystack.txt"
    assert all(shlex.split(command)[0] == "parallelcomp" for command in commands)


@pytest.mark.default_model
def test_quick_start_finds_the_pass_key(tmp_path):
    # The commands after the installs, in a shell, with this environment's `parallelcomp`.
    environment = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    }
    done = subprocess.run(
        " && ".join(quick_start()[2:]),
        shell=True,
        executable="/bin/bash",
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert first_integer(done.stdout) == random_key(0)
    assert f"parallelcomp: pass key {random_key(0)} at depth 0.5\n" in done.stderr


@pytest.mark.default_model
def test_python_snippet_finds_the_pass_key(capsys):
    snippet = compile(readme_snippet(README, "python-quick-start"), str(README), "exec")
    exec(snippet, {})  # noqa: S102 - running the README is the point
    printed = capsys.readouterr().out
    first_line, streamed = printed.split("\n", 1)
    assert "71432" in first_line and first_line.endswith("[0, 1]")  # one chunk: both kept
    assert streamed.strip()


@pytest.mark.default_model
def test_structured_output_snippet_fills_the_model_and_makes_the_call():
    snippet = compile(readme_snippet(README, "python-structured-output"), str(README), "exec")
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 - running the README is the point
    sale, call = namespace["sale"], namespace["call"]
    assert sale.price_eur == 48500 and "Northwind" in sale.buyer
    assert call.name == "get_weather" and call.arguments == {"city": "Paris"}
