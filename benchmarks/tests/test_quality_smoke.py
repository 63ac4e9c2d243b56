"""The quality harness end to end on CPU: two lengths, two items, two methods, a tiny model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from parallelcomp_bench.quality import run
from parallelcomp_bench.quality.report import write_report
from parallelcomp_bench.quality.results import record_key
from parallelcomp_bench.quality.suites import build_items, item_groups

from parallelcomp_llm.testing import tiny_model_folder

WINDOW = 2048


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    return tiny_model_folder(folder, window=WINDOW)


def test_run_writes_results_resumes_and_reports(model_dir, tmp_path):
    results = tmp_path / "quality_passkey.jsonl"
    argv = ["--suite", "passkey", "--lengths", "1024", "3072", "--depths", "2"]
    argv += ["--methods", "parallelcomp", "full", "--model", str(model_dir)]
    argv += ["--device", "cpu", "--results", str(results)]

    run.main(argv)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 2 * 2 * 2
    assert {(r["method"], r["length"], r["depth"]) for r in records} == {
        (m, n, d) for m in ("parallelcomp", "full") for n in (1024, 3072) for d in (0.0, 1.0)
    }
    for r in records:
        assert r["error"] is None
        assert 0 < r["prompt_tokens"] <= r["length"]
        assert r["score"] in (0.0, 1.0) and r["correct"] == (r["score"] == 1.0)
        assert isinstance(r["answer"], str) and r["references"][0].isdigit()
        assert r["engine"]["config"]["chunk_tokens"] > 0 and r["engine"]["stages"]["scorer"]
        assert r["git"]["commit"] and len(r["source_sha256"]) == 64
    chunks = {(r["length"], r["chunks_total"]) for r in records if r["method"] == "parallelcomp"}
    (short, short_chunks), (long, long_chunks) = sorted(chunks)
    assert (short, long) == (1024, 3072) and short_chunks == 1 < long_chunks

    run.main(argv)
    assert len(results.read_text().splitlines()) == len(records)

    markdown = write_report(tmp_path).read_text()
    assert "## Passkey" in markdown
    passkey_table = markdown.split("## Passkey")[1]
    assert "| method | 1K | 3K |" in passkey_table
    assert "| parallelcomp |" in passkey_table and "| full |" in passkey_table
    assert (tmp_path / "quality_passkey.png").stat().st_size > 0


def test_items_built_in_processes_equal_those_built_here_in_rounds(model_dir):
    groups = item_groups("passkey", [1024, 3072], 1, 3, None, 0)
    here = build_items(groups, model_dir)
    assert [(i.index, i.length) for i in here] == [(d, n) for d in range(3) for n in (1024, 3072)]
    assert [i.depth for i in here[::2]] == [0.0, 0.5, 1.0]
    assert build_items(groups, model_dir, processes=2) == here


def test_only_unanswered_items_are_built():
    groups = item_groups("ruler", [4096], 3, 1, ["vt", "cwe"], 0)
    done = {record_key("ruler", "vt", 4096, 0, i, m) for i in (0, 1) for m in ("full", "a")}
    done.add(record_key("ruler", "cwe", 4096, 0, 2, "full"))
    pending = run.unanswered(groups, ["full", "a"], done)
    assert [(g.task, g.indices) for g in pending] == [("vt", (2,)), ("cwe", (0, 1, 2))]
    assert run.unanswered(
        groups, ["full"], done | {record_key("ruler", "vt", 4096, 0, 2, "full")}
    ) == [replace(groups[1], indices=(0, 1))]
