"""The default model's cache (`CachedFolder`): built once by processes that start together, checked
against its manifest at load, damage reported with what to delete, leftovers of a dead build
removed, an unwritable cache folder reported in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parallelcomp_llm import ModelDownloadError, default_model
from parallelcomp_llm.cached_folder import MANIFEST, CachedFolder


def write_weights(staging: Path, scratch: Path) -> None:
    (scratch / "download.bin").write_bytes(b"w" * 1000)
    (staging / "config.json").write_text('{"model_type": "llama"}')
    (staging / "model.safetensors").write_bytes((scratch / "download.bin").read_bytes())


@pytest.fixture
def built(tmp_path) -> Path:
    return CachedFolder(tmp_path / "Model", "test model").ensure(write_weights)


def test_a_built_folder_holds_its_files_and_a_manifest_of_their_sha256(built):
    manifest = json.loads((built / MANIFEST).read_text())
    assert sorted(manifest) == ["config.json", "model.safetensors"]
    assert all(len(digest) == 64 for digest in manifest.values())
    assert sorted(p.name for p in built.parent.iterdir()) == [".Model.lock", "Model"]
    assert CachedFolder(built, "test model").ensure(write_weights) == built


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "model.safetensors").write_bytes(b"w" * 500), "model.safetensors has"),
        (lambda d: (d / "model.safetensors").write_bytes(b"w" * 999 + b"x"), "expected"),
        (lambda d: (d / "config.json").write_text("{"), "config.json has sha256"),
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / MANIFEST).write_text("[1, 2]"), "not a name-to-sha256 mapping"),
        (lambda d: (d / MANIFEST).write_text("{"), "cannot be read"),
    ],
    ids=["truncated", "flipped-byte", "bad-config", "missing-config", "odd-manifest", "bad-json"],
)
def test_a_damaged_folder_is_refused_naming_what_to_delete(built, damage, reason):
    damage(built)
    with pytest.raises(ModelDownloadError, match=reason) as raised:
        CachedFolder(built, "test model").ensure(write_weights)
    assert f"in {built} is damaged" in str(raised.value)
    assert "delete that folder" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_change_after_a_check_is_seen_by_the_next_check(built):
    folder = CachedFolder(built, "test model")
    folder.check()
    (built / "model.safetensors").write_bytes(b"w" * 999 + b"y")
    with pytest.raises(ModelDownloadError, match="model.safetensors has sha256"):
        folder.check()


def test_a_folder_without_manifest_is_refused_not_rebuilt_over(tmp_path):
    (tmp_path / "Model").mkdir()
    (tmp_path / "Model" / "config.json").write_text("{}")
    with pytest.raises(ModelDownloadError, match=f"manifest {MANIFEST} is missing"):
        CachedFolder(tmp_path / "Model", "test model").ensure(write_weights)
    assert (tmp_path / "Model" / "config.json").read_text() == "{}"


def test_a_failed_build_leaves_nothing_and_a_dead_one_is_cleaned_up(tmp_path):
    def fail(staging: Path, scratch: Path) -> None:
        write_weights(staging, scratch)
        raise ModelDownloadError("the index went away")

    folder = CachedFolder(tmp_path / "Model", "test model")
    with pytest.raises(ModelDownloadError, match="the index went away"):
        folder.ensure(fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".Model.lock"]
    dead = tmp_path / ".Model.partial-abc123"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    assert folder.ensure(write_weights) == tmp_path / "Model"
    assert not dead.exists()


def test_an_unwritable_cache_folder_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(default_model.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(ModelDownloadError, match="cannot write the cache folder") as raised:
        default_model.default_model_path()
    assert "PARALLELCOMP_CACHE_DIR" in str(raised.value)
    assert "\n" not in str(raised.value)


_RACER = """
import sys, time
from pathlib import Path
from parallelcomp_llm.cached_folder import CachedFolder

def build(staging, scratch):
    with open(sys.argv[2], "a") as log:
        log.write("built\\n")
    time.sleep(1.0)
    (staging / "model.safetensors").write_bytes(b"w" * 1000)

print(CachedFolder(Path(sys.argv[1]), "test model").ensure(build))
"""


def test_processes_starting_together_build_once_and_all_load(tmp_path):
    target, log = tmp_path / "cache" / "Model", tmp_path / "builds.log"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_RACER), str(target), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0], results
    assert [out.strip() for out, _ in results] == [str(target)] * 3
    assert log.read_text() == "built\n"
    assert sorted(p.name for p in target.parent.iterdir()) == [".Model.lock", "Model"]


@pytest.mark.default_model
def test_the_default_model_folder_is_checked_against_its_manifest():
    path = default_model.default_model_path()
    manifest = json.loads((path / MANIFEST).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest)
