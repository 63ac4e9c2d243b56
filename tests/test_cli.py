"""The `parallelcomp` command, on a tiny model saved to disk: `ask` over files, directories and
standard input, `haystack`, and the one-line errors of user mistakes, checked before any model
loads."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from parallelcomp_llm import ParallelCompEngine
from parallelcomp_llm.cli import main
from parallelcomp_llm.haystack import PASSKEY_NOISE, passkey_haystack, random_key
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


def run_cli(*args: str, env=None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """`parallelcomp ARGS` in a subprocess; its stderr (and stdout, unless redirected) as text."""
    command = [sys.executable, "-m", "parallelcomp_llm.cli", *args]
    return subprocess.run(
        command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, check=False
    )


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


def test_scoring_heads_choose_the_heads_scorer(model_dir, tmp_path, capsys):
    context = tmp_path / "doc.txt"
    context.write_text(text_of_tokens(1200, seed=5), encoding="utf-8")
    args = ask(model_dir, "--stats", "--scoring-heads", "1:0", "0:1", "--context", str(context))
    assert main([*args, "What?"]) == 0
    out, err = capsys.readouterr()
    engine = ParallelCompEngine.from_pretrained(
        model_dir,
        chunk_tokens=300,
        keep_chunks=2,
        kv_budget=80,
        chunk_scoring="heads",
        scoring_heads=[(1, 0), (0, 1)],
    )
    expected = engine.generate(context.read_text(), "What?", max_new_tokens=12)
    assert out == expected.text + "\n"
    scorer = json.loads(err[err.index("{") :])["engine"]["stages"]["scorer"]
    assert scorer["name"] == "heads" and scorer["heads"] == [[1, 0], [0, 1]]


def test_a_scoring_head_outside_the_model_is_one_line(model_dir, tmp_path, capsys):
    context = tmp_path / "doc.txt"
    context.write_text(text_of_tokens(700, seed=6), encoding="utf-8")
    args = ask(model_dir, "--scoring-heads", "5:0", "--context", str(context), "What?")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith(
        "\nparallelcomp: error: chunk scorer 'heads' reads layer 5, outside the model's 2 layers "
        "(counted from 0)\n"
    )


def test_standard_input_is_a_context(model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text_of_tokens(200).encode())))
    assert main(ask(model_dir, "--context", "-", "What?")) == 0
    assert capsys.readouterr().out.strip() != ""


def test_a_directory_is_its_text_files_in_path_order(model_dir, tmp_path, capsys):
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "notes.md").write_text(text_of_tokens(300, seed=2))
    (tmp_path / "a.txt").write_text(text_of_tokens(200, seed=1))
    (tmp_path / ".git" / "HEAD").write_text(text_of_tokens(100))
    (tmp_path / ".hidden.txt").write_text(text_of_tokens(100))
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    assert main(ask(model_dir, "--stats", "--context", str(tmp_path), "What?")) == 0
    out, err = capsys.readouterr()
    engine = ParallelCompEngine.from_pretrained(
        model_dir, chunk_tokens=300, keep_chunks=2, kv_budget=80
    )
    documents = [text_of_tokens(200, seed=1), text_of_tokens(300, seed=2)]
    assert out == engine.generate(documents, "What?", max_new_tokens=12).text + "\n"
    assert err.splitlines()[:2] == [
        f"parallelcomp: warning: skipping {tmp_path / 'latin1.txt'} (not UTF-8 text)",
        f"parallelcomp: warning: skipping {tmp_path / 'logo.png'} (not UTF-8 text)",
    ]
    stats = json.loads(err[err.index("{") :])
    assert stats["context_tokens"] == 500
    assert {d for chunk in stats["chunks"] for d in chunk["documents"]} == {0, 1}


def test_a_directory_without_text_is_refused(tmp_path, capsys):
    (tmp_path / "data.bin").write_bytes(b"\x00\x01\x02")
    args = ["ask", "--model", "/nonexistent", "--context", str(tmp_path), "What?"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"parallelcomp: warning: skipping {tmp_path / 'data.bin'} (not UTF-8 text)\n"
        f"parallelcomp: error: context directory '{tmp_path}' holds no UTF-8 text file\n"
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--context", "{text}", "  "], "question is empty"),
        (
            ["--context", "{empty}", "What?"],
            "context is empty: give at least one non-blank document",
        ),
        (
            ["--context", "/no/such/file.txt", "What?"],
            "cannot read context file '/no/such/file.txt': No such file or directory",
        ),
        (
            ["--context", "{latin1}", "What?"],
            "context '{latin1}' is not UTF-8 text (byte 3): convert it to UTF-8 first",
        ),
        (
            ["--keep-chunks", "0", "--context", "{text}", "What?"],
            (
                "invalid ParallelCompConfig: keep_chunks: Value error, keep_chunks as a fraction "
                "must be in (0, 1] (got 0.0)"
            ),
        ),
        (
            ["--chunk-tokens", "1", "--context", "{text}", "What?"],
            (
                "invalid ParallelCompConfig: chunk_tokens: Input should be greater than or equal "
                "to 16 (got 1)"
            ),
        ),
        (
            ["--keep-chunks", "inf", "--context", "{text}", "What?"],
            (
                "invalid ParallelCompConfig: keep_chunks: Value error, keep_chunks as a fraction "
                "must be in (0, 1] (got inf)"
            ),
        ),
        (
            ["--temperature", "nan", "--context", "{text}", "What?"],
            "invalid DecodeSettings: temperature: Input should be a finite number (got nan)",
        ),
        (
            ["--seed", str(2**70), "--context", "{text}", "What?"],
            (
                "invalid DecodeSettings: seed: Input should be less than 9223372036854775808 "
                f"(got {2**70})"
            ),
        ),
        (
            ["--context", "/dev/zero", "What?"],
            f"context '/dev/zero' is longer than {64 * 2**20} bytes",
        ),
        (
            ["--temperature", "-1", "--context", "{text}", "What?"],
            (
                "invalid DecodeSettings: temperature: Input should be greater than or equal to 0 "
                "(got -1.0)"
            ),
        ),
    ],
)
def test_input_is_checked_before_the_model_loads(extra, message, tmp_path, capsys):
    # The model path does not exist: each mistake is reported before the model is looked for.
    paths = {name: tmp_path / f"{name}.txt" for name in ("text", "empty", "latin1")}
    paths["text"].write_text("The pass key is 12345.")
    paths["empty"].write_text("  \n")
    paths["latin1"].write_bytes("café crème".encode("latin-1"))
    args = [arg.format(**paths) for arg in extra]
    assert main(["ask", "--model", "/nonexistent", *args]) == 2
    assert capsys.readouterr().err == f"parallelcomp: error: {message.format(**paths)}\n"


def test_a_missing_model_path_is_one_line(tmp_path, capsys):
    (tmp_path / "doc.txt").write_text("The pass key is 12345.")
    assert main(["ask", "--model", "/nonexistent", "--context", str(tmp_path), "What?"]) == 2
    assert (
        capsys.readouterr().err == "parallelcomp: error: model path '/nonexistent' does not exist\n"
    )


def test_a_folder_that_is_no_model_is_one_line(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "doc.txt").write_text("The pass key is 12345.")
    args = ["ask", "--model", str(tmp_path / "model"), "--context", str(tmp_path / "doc.txt")]
    assert main([*args, "What?"]) == 2
    assert capsys.readouterr().err == (
        f"parallelcomp: error: cannot load a model from '{tmp_path / 'model'}': Unrecognized "
        f"model in {tmp_path / 'model'}. Should have a `model_type` key in its config.json.\n"
    )


def test_an_unreachable_hub_name_is_one_line(tmp_path):
    (tmp_path / "doc.txt").write_text("The pass key is 12345.")
    # Offline mode: the Hub cannot be reached, at once (instead of after network timeouts).
    environment = os.environ | {"HF_HUB_OFFLINE": "1"}
    result = run_cli(
        "ask",
        "--model",
        "some-org/some-model",
        "--context",
        str(tmp_path / "doc.txt"),
        "What?",
        env=environment,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "parallelcomp: error: cannot load model 'some-org/some-model' from the Hugging Face Hub: "
        "We couldn't connect to 'https://huggingface.co'"
    )


@pytest.mark.parametrize("command", ["ask", "haystack"])
def test_a_reader_that_leaves_gets_no_traceback(command, model_dir, tmp_path):
    (tmp_path / "doc.txt").write_text(text_of_tokens(200))
    arguments = {
        "ask": ask(model_dir, "--context", str(tmp_path / "doc.txt"), "What?"),
        "haystack": ["haystack", "--tokens", "20000", "--model", str(model_dir)],
    }
    reader, writer = os.pipe()
    os.close(reader)  # as `| head -c 1` once it has its byte: every write finds no reader
    try:
        result = run_cli(*arguments[command], stdout=writer)
    finally:
        os.close(writer)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_haystack_is_sized_in_the_model_tokens(model_dir, capsys):
    args = ["haystack", "--tokens", "900", "--depth", "0.25", "--key", "12345"]
    assert main([*args, "--model", str(model_dir)]) == 0
    out, err = capsys.readouterr()
    assert out == passkey_haystack(900, 0.25, 12345, lambda text: len(text.encode()))
    assert abs(len(out.encode()) - 900) < len(PASSKEY_NOISE)  # one byte, one tiny token
    assert err == "parallelcomp: pass key 12345 at depth 0.25\n"


def test_haystack_key_is_drawn_from_the_seed(model_dir, capsys):
    assert main(["haystack", "--tokens", "300", "--seed", "7", "--model", str(model_dir)]) == 0
    out, err = capsys.readouterr()
    assert f"The pass key is {random_key(7)}." in out
    assert err == f"parallelcomp: pass key {random_key(7)} at depth 0.5\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tokens", "0"], "tokens must be at least 1 (got 0)"),
        (["--tokens", "100", "--depth", "1.5"], "depth must be in [0, 1] (got 1.5)"),
        (
            ["--tokens", "100", "--model", "/nonexistent"],
            "model path '/nonexistent' does not exist",
        ),
    ],
)
def test_haystack_mistakes_are_one_line(extra, message, capsys):
    # Arguments are checked before the (default) tokenizer loads.
    assert main(["haystack", *extra]) == 2
    assert capsys.readouterr() == ("", f"parallelcomp: error: {message}\n")
