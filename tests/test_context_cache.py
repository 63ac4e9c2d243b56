"""Encode once, ask many: equal answers, reuse without prefill, budgets, disk round trip, refusal."""

from __future__ import annotations

import pytest
import torch

from parallelcomp_llm import InvalidInputError
from parallelcomp_llm.context_cache import CacheStore, ContextCacheMismatchError
from parallelcomp_llm.testing import count_prefills, text_of_tokens, tiny_engine

DOCS = [text_of_tokens(300, seed=i) for i in range(5)]
SETTINGS = dict(keep_chunks=2, kv_budget=96, chunk_batch_size=2)


def test_answers_with_a_cache_equal_answers_without():
    engine = tiny_engine("qwen2", **SETTINGS)
    fresh = tiny_engine("qwen2", **SETTINGS)
    cache = engine.encode(DOCS)
    for question in ("Which?", "Who wrote it?"):
        with_cache = engine.generate(cache, question, max_new_tokens=16)
        without = fresh.generate(DOCS, question, max_new_tokens=16)
        assert with_cache.token_ids == without.token_ids
        assert with_cache.stats.context_cache_hit and with_cache.stats.chunks_prefilled == 0
        assert [c.relevance for c in with_cache.stats.chunks] == pytest.approx(
            [c.relevance for c in without.stats.chunks], abs=1e-5
        )
    assert (
        "".join(engine.stream(cache, "Which?", max_new_tokens=16))
        == engine.generate(cache, "Which?", max_new_tokens=16).text
    )


def test_engine_reuses_recent_contexts_without_prefill():
    engine = tiny_engine("llama", context_cache_host_fraction=0.05, **SETTINGS)
    question = "Where?"
    widths = count_prefills(engine.model)
    first = engine.generate(DOCS, question, max_new_tokens=8)
    assert (first.stats.context_cache_hit, first.stats.chunks_prefilled) == (False, 5)
    assert len(widths) == 3
    second = engine.generate(list(DOCS), "Anything else?", max_new_tokens=8)
    assert (second.stats.context_cache_hit, second.stats.chunks_prefilled) == (True, 0)
    assert len(widths) == 3
    other = engine.generate(DOCS[:4], question, max_new_tokens=8)
    assert not other.stats.context_cache_hit
    reference = tiny_engine("llama", **SETTINGS).generate(DOCS, "Anything else?", max_new_tokens=8)
    assert second.token_ids == reference.token_ids


def test_store_keeps_within_budget_least_recently_used_first():
    engine = tiny_engine("llama", **SETTINGS)
    caches = [engine.encode([text_of_tokens(300, seed=s)]) for s in range(4)]
    size = caches[0].nbytes
    assert all(c.nbytes == size for c in caches)
    store = CacheStore(torch.device("cpu"), device_budget=0, host_budget=2 * size)
    for cache in caches[:3]:
        store.put(cache)
    assert store.keys == [caches[1].context_key, caches[2].context_key]
    assert store.get(caches[1].context_key) is not None
    store.put(caches[3])
    assert store.keys == [caches[1].context_key, caches[3].context_key]
    assert store.get(caches[0].context_key) is None
    too_big = CacheStore(torch.device("cpu"), device_budget=0, host_budget=size - 1)
    too_big.put(caches[0])
    assert too_big.keys == []


def test_save_and_load_round_trip(tmp_path):
    engine = tiny_engine("mistral", **SETTINGS)
    cache = engine.encode(DOCS)
    path = tmp_path / "corpus.safetensors"
    cache.save(path)
    loaded = engine.load_context_cache(path)
    assert loaded.context_key == cache.context_key and loaded.nbytes == cache.nbytes
    assert [c.token_ids for c in loaded.chunks] == [c.token_ids for c in cache.chunks]
    assert [c.spans for c in loaded.chunks] == [c.spans for c in cache.chunks]
    expected = engine.generate(cache, "Which?", max_new_tokens=12)
    assert engine.generate(loaded, "Which?", max_new_tokens=12).token_ids == expected.token_ids


def test_cache_for_another_model_or_settings_is_refused(tmp_path):
    cache = tiny_engine("llama", **SETTINGS).encode(DOCS)
    path = tmp_path / "corpus.safetensors"
    cache.save(path)
    other_weights = tiny_engine("llama", seed=1, **SETTINGS)
    other_chunks = tiny_engine("llama", **(SETTINGS | {"chunk_tokens": 200}))
    for engine in (other_weights, other_chunks):
        with pytest.raises(ContextCacheMismatchError):
            engine.load_context_cache(path)
        with pytest.raises(ContextCacheMismatchError):
            engine.generate(cache, "Which?")


def test_unreadable_cache_file_is_a_clear_error(tmp_path):
    path = tmp_path / "not-a-cache.safetensors"
    path.write_bytes(b"garbage")
    with pytest.raises(InvalidInputError, match="cannot read context cache"):
        tiny_engine("llama").load_context_cache(path)


@pytest.mark.parametrize("settings", [SETTINGS, SETTINGS | {"calibration_layers": (0, 1)}])
def test_several_questions_in_one_batch_equal_one_by_one(settings):
    engine = tiny_engine("llama", context_cache_host_fraction=0.0, **settings)
    questions = ["Which?", "Who wrote the third part?", "Why so?"]
    single = [engine.generate(DOCS, q, max_new_tokens=12) for q in questions]
    widths = count_prefills(engine.model)
    batched = engine.generate_batch(DOCS, questions, max_new_tokens=12)
    assert [a.token_ids for a in batched] == [a.token_ids for a in single]
    assert [a.text for a in batched] == [a.text for a in single]
    assert len(widths) == 3
    assert [a.stats.kv_entries_kept for a in batched] == [a.stats.kv_entries_kept for a in single]
    with pytest.raises(InvalidInputError):
        engine.generate_batch(DOCS, "Which?")
    with pytest.raises(InvalidInputError):
        engine.generate_batch(DOCS, ["Which?", ""])


def test_the_store_stays_consistent_under_concurrent_use():
    from concurrent.futures import ThreadPoolExecutor

    from parallelcomp_llm.context_cache import ContextCache
    from parallelcomp_llm.prefill import EncodedBatch

    def cache(key: int) -> ContextCache:
        tensor = torch.zeros(1, 1, 8, 4)
        batch = EncodedBatch([0], [8], [tensor.clone()], [tensor.clone()])
        return ContextCache("model", f"key{key}", [], 8, [batch], [1])

    size = cache(0).nbytes
    store = CacheStore(torch.device("cpu"), 0, 5 * size)

    def work(worker: int) -> int:
        for step in range(1500):
            key = (worker * 7 + step) % 12
            if step % 50 == 0:
                store.clear()
            elif step % 3:
                store.put(cache(key))
            else:
                store.get(f"key{key}")
        return len(store.keys)

    with ThreadPoolExecutor(4) as pool:
        assert all(held <= 5 for held in pool.map(work, range(4)))


def _rewrite(source, target, change):
    """Write `target`: the cache file `source` with `change(header, tensors)` applied."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as handle:
        header = json.loads(handle.metadata()["parallelcomp"])
    tensors = load_file(str(source))
    change(header, tensors)
    save_file(tensors, str(target), metadata={"parallelcomp": json.dumps(header)})


def _nan_in_kv(header, tensors):
    tensors["batch0.keys0"][0, 0, 0, 0] = float("nan")


def _float_ids(header, tensors):
    tensors["chunk0"] = tensors["chunk0"].float()


TAMPERINGS = {
    "a length": lambda h, t: h["batches"][0]["lengths"].__setitem__(0, 7),
    "an out-of-range chunk index": lambda h, t: h["batches"][0]["chunk_indices"].__setitem__(0, 99),
    "float chunk ids": _float_ids,
    "NaN in the KV": _nan_in_kv,
    "the token count": lambda h, t: h.__setitem__("context_tokens", 1),
    "a missing layer": lambda h, t: t.pop("batch0.values1"),
    "spans outside the chunk": lambda h, t: h["spans"][0][0].__setitem__(3, 10_000),
    "a header without its fields": lambda h, t: (h.clear(), h.update({"format": 3})),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_a_tampered_cache_file_is_refused(tampering, tmp_path):
    engine = tiny_engine("qwen2", **SETTINGS)
    engine.encode(DOCS).save(tmp_path / "good.safetensors")
    _rewrite(tmp_path / "good.safetensors", tmp_path / "bad.safetensors", TAMPERINGS[tampering])
    with pytest.raises(InvalidInputError):
        engine.load_context_cache(tmp_path / "bad.safetensors")
    truncated = (tmp_path / "good.safetensors").read_bytes()[:-100]
    (tmp_path / "cut.safetensors").write_bytes(truncated)
    with pytest.raises(InvalidInputError):
        engine.load_context_cache(tmp_path / "cut.safetensors")


def test_a_relabelled_cache_never_answers_for_another_corpus(tmp_path):
    engine = tiny_engine("qwen2", **SETTINGS)
    other = [text_of_tokens(300, seed=i + 10) for i in range(5)]
    other_key = engine.encode(other).context_key
    engine.clear_context_cache()
    engine.encode(DOCS).save(tmp_path / "good.safetensors")
    relabel = lambda header, tensors: header.__setitem__("context_key", other_key)  # noqa: E731
    _rewrite(tmp_path / "good.safetensors", tmp_path / "relabelled.safetensors", relabel)
    loaded = engine.load_context_cache(tmp_path / "relabelled.safetensors")
    assert loaded.context_key != other_key
    fresh = tiny_engine("qwen2", **SETTINGS)
    answer = engine.generate(other, "Which?", max_new_tokens=8)
    assert not answer.stats.context_cache_hit
    assert answer.token_ids == fresh.generate(other, "Which?", max_new_tokens=8).token_ids


def test_a_loaded_cache_obeys_max_context_tokens(tmp_path):
    tiny_engine("qwen2", **SETTINGS).encode(DOCS).save(tmp_path / "c.safetensors")
    small = tiny_engine("qwen2", max_context_tokens=1000, **SETTINGS)
    with pytest.raises(InvalidInputError, match="more than max_context_tokens=1000"):
        small.load_context_cache(tmp_path / "c.safetensors")
