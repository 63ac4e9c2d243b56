"""The `parallelcomp ask` command, on a tiny model saved to disk."""

from __future__ import annotations

import io
import json
import sys

import pytest

from parallelcomp_llm import ParallelCompEngine
from parallelcomp_llm.cli import main
from parallelcomp_llm.testing import text_of_tokens, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", window=2048).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def ask(model_dir, *args: str) -> list[str]:
    return [
        "ask",
        "--model",
        str(model_dir),
        "--max-new-tokens",
        "12",
        "--chunk-tokens",
        "300",
        "--keep-chunks",
        "2",
        "--kv-budget",
        "80",
        *args,
    ]


def test_answer_matches_the_engine_and_stats_are_printed(model_dir, tmp_path, capsys):
    files = []
    for i in range(3):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(text_of_tokens(400, seed=i), encoding="utf-8")
    args = ask(model_dir, "--stats", *[a for f in files for a in ("--context", str(f))], "What?")
    assert main(args) == 0
    out, err = capsys.readouterr()
    engine = ParallelCompEngine.from_pretrained(
        model_dir, chunk_tokens=300, keep_chunks=2, kv_budget=80
    )
    expected = engine.generate([f.read_text() for f in files], "What?", max_new_tokens=12)
    assert out == expected.text + "\n"
    stats = json.loads(err[err.index("{") :])
    assert stats["chunks_total"] == 6 and stats["chunks_kept"] == 2
    assert stats["context_tokens"] == 1200
    assert stats["engine"]["config"]["keep_chunks"] == 2
    assert stats["engine"]["stages"]["selector"]["name"] == "snapkv"


def test_standard_input_is_a_context(model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text_of_tokens(200).encode())))
    assert main(ask(model_dir, "--context", "-", "What?")) == 0
    assert capsys.readouterr().out.strip() != ""


def test_non_utf8_file_is_a_clear_error(model_dir, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café crème".encode("latin-1"))
    assert main(ask(model_dir, "--context", str(bad), "What?")) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--context", "/no/such/file.txt", "What?"], "cannot read context file"),
        (["--kv-budget", "0", "--context", "/dev/null", "What?"], "kv_budget"),
    ],
)
def test_user_mistakes_exit_with_a_message(model_dir, extra, message, capsys):
    assert main(ask(model_dir, *extra)) == 2
    assert message in capsys.readouterr().err


def test_empty_file_is_refused(model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(ask(model_dir, "--context", str(empty), "What?")) == 2
    assert "context is empty" in capsys.readouterr().err
