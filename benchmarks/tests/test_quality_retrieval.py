"""The retrieval baselines: BM25 over LlamaIndex nodes finds the node with a planted needle,
keeps the token budget, puts the kept nodes back in document order, and answers within the
trained window."""

from __future__ import annotations

import pytest
from parallelcomp_bench.quality.items import Item
from parallelcomp_bench.quality.methods import make_method
from parallelcomp_bench.quality.retrieval import NODE_TOKENS

from parallelcomp_llm.testing import PASSKEY_NOISE, tiny_model_folder

WINDOW = 2048
NEEDLES = (
    "One of the special magic numbers for the apple orchard is: 74512.",
    "One of the special magic numbers for the apple orchard is: 90331.",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-rag")
    return tiny_model_folder(path, window=WINDOW, seed=2)


@pytest.fixture(scope="module")
def methods(model_dir):
    names = ("rag-bm25", "rag-bm25-window", "rag-bm25-1k")
    return {name: make_method(name, model_dir, device="cpu") for name in names}


def item_with_needles(noise_blocks: int = 60) -> Item:
    """A context of noise with `NEEDLES` at two depths, and a question that names them."""
    blocks = [PASSKEY_NOISE] * noise_blocks
    blocks[noise_blocks // 4] = NEEDLES[0]
    blocks[3 * noise_blocks // 4] = NEEDLES[1]
    return Item(
        suite="test",
        task="niah",
        length=WINDOW * 4,
        seed=0,
        index=0,
        context=" ".join(blocks),
        question="What are the special magic numbers for the apple orchard?",
        references=("74512", "90331"),
        match="all",
        max_new_tokens=16,
    )


def test_the_nodes_with_the_needles_are_retrieved_in_document_order(methods):
    item = item_with_needles()
    method = methods["rag-bm25-1k"]
    retrieved = method.retrieve(item)
    assert retrieved.nodes_total > 40
    assert NEEDLES[0] in retrieved.text and NEEDLES[1] in retrieved.text
    assert retrieved.text.index(NEEDLES[0]) < retrieved.text.index(NEEDLES[1])
    assert item.context.count(PASSKEY_NOISE) > retrieved.text.count(PASSKEY_NOISE)


@pytest.mark.parametrize("name", ["rag-bm25", "rag-bm25-window", "rag-bm25-1k"])
def test_budgets_are_respected_and_the_answer_fits_the_window(methods, name):
    item = item_with_needles()
    method = methods[name]
    budget = method.budget_tokens(item)
    retrieved = method.retrieve(item)
    context_tokens = len(method.engine.prompts.encode(retrieved.text))
    assert budget - NODE_TOKENS < context_tokens <= budget + retrieved.nodes_kept
    output = method.answer(item)
    assert output.prompt_tokens + item.max_new_tokens <= WINDOW
    assert (output.chunks_kept, output.chunks_total) == (
        retrieved.nodes_kept,
        retrieved.nodes_total,
    )
    assert output.prefill_seconds > 0 and output.kv_kept == output.prompt_tokens


def test_the_budgets_are_the_kept_chunks_the_window_and_fixed_sizes(methods):
    item = item_with_needles()
    kept, window, fixed = (methods[n] for n in ("rag-bm25", "rag-bm25-window", "rag-bm25-1k"))
    config = kept.engine.config
    assert kept.budget_tokens(item) == config.keep_chunks * config.chunk_tokens
    prompts = window.engine.prompts
    template = len(prompts.prefix_ids) + len(prompts.question_ids(item.question))
    assert window.budget_tokens(item) == WINDOW - template - item.max_new_tokens
    assert fixed.budget_tokens(item) == 1000


def test_the_kept_chunks_budget_needs_a_count_of_chunks(model_dir):
    with pytest.raises(ValueError, match="needs keep_chunks as a count"):
        make_method("rag-bm25[keep_chunks=0.5]", model_dir, device="cpu")


def test_a_context_within_the_budget_is_kept_whole(methods):
    item = item_with_needles(noise_blocks=4)
    retrieved = methods["rag-bm25-window"].retrieve(item)
    assert retrieved.nodes_kept == retrieved.nodes_total
    assert NEEDLES[0] in retrieved.text and NEEDLES[1] in retrieved.text


def test_rankings_are_shared_by_key_and_the_oldest_is_dropped():
    from parallelcomp_bench.quality.retrieval import Ranking, RankingCache

    cache, calls = RankingCache(size=2), []

    def rank(name):
        calls.append(name)
        return Ranking([(0, name, 1)], 0.5)

    for name in ("a", "a", "b", "c", "a"):
        assert cache.get(("model", name, "q"), lambda name=name: rank(name)).nodes[0][1] == name
    assert calls == ["a", "b", "c", "a"]
