"""The task-family report: families average their tasks' means, the best method and its lead are
named, and a family with a task missing stays empty."""

from __future__ import annotations

from parallelcomp_bench.quality.families import FAMILIES, family_scores, markdown


def record(method: str, task: str, score: float, length: int = 16384) -> dict:
    return {
        "method": method,
        "task": task,
        "length": length,
        "score": score,
        "model": "tiny",
        "hardware": "cpu",
        "error": None,
        "prefill_seconds": 1.0,
        "peak_memory_bytes": 2**30,
        "prompt_tokens": 100,
    }


def test_families_average_task_means_and_name_the_winner():
    tasks = [task for family in FAMILIES.values() for task in family]
    assert sorted(tasks) == sorted(set(tasks)) and len(tasks) == 13
    records = [record("a", t, 1.0) for t in tasks] + [record("b", t, 0.0) for t in tasks]
    records += [record("a", "niah_single_1", 0.0), record("b", "cwe", 1.0)]
    scores = family_scores(records)
    assert scores[("a", 16384, "single needle")] == (0.5 + 1 + 1) / 3
    assert scores[("b", 16384, "aggregation")] == (0.5 + 0) / 2
    text = markdown(records, ["a", "b"])
    assert "| single needle | 83.3 | 0.0 | a (+83.3) |" in text
    assert "| a | 16K | 14 | 1.00 | 1.00 | 100 |" in text


def test_a_family_with_a_task_missing_is_left_empty():
    scores = family_scores([record("a", "cwe", 1.0)])
    assert ("a", 16384, "aggregation") not in scores
    assert "| aggregation | – |" in markdown([record("a", "cwe", 1.0)], ["a"])
