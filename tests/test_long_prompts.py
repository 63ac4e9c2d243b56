"""Prompts and chats longer than the trained window: cut into system prompt, context and question
by the rule of `long_prompt`, and answered with ParallelComp; system prompts in chunk prefixes;
relevance as shares."""

from __future__ import annotations

import pytest

from parallelcomp_llm import ContextTooLongError, InvalidInputError
from parallelcomp_llm.context_cache import ContextCache
from parallelcomp_llm.long_prompt import MIN_QUESTION_TOKENS, PromptSplitter
from parallelcomp_llm.testing import text_of_tokens, tiny_engine


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("qwen2", max_context_tokens=4000)


@pytest.fixture(scope="module")
def splitter(engine):
    return PromptSplitter(engine.prompts, engine.config.question_reserve_tokens)


def test_a_chat_is_cut_into_system_prompt_context_and_question(splitter):
    corpus = text_of_tokens(900)
    parts = splitter.split(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": f"Read this:\n\n{corpus}\n\nWhat is the key?"},
        ],
        ["a given document"],
    )
    assert parts.system_prompt == "Be brief."
    assert parts.documents == [
        "a given document",
        "User: Hello",
        "Assistant: Hi.",
        f"Read this:\n\n{corpus}",
    ]
    assert parts.question == "What is the key?"


def test_a_long_system_message_is_context(splitter):
    long_system = "Context:\n\n" + text_of_tokens(300)
    parts = splitter.split(
        [{"role": "system", "content": long_system}, {"role": "user", "content": "Which?"}]
    )
    assert parts.system_prompt is None
    assert parts.documents == [long_system]
    assert parts.question == "Which?"


def test_a_short_last_paragraph_takes_the_one_before(splitter):
    parts = splitter.split([{"role": "user", "content": "ctx " * 50 + "\n\nQ: key?\n\nAnswer:"}])
    assert parts.question == "Q: key?\n\nAnswer:"
    assert len(splitter.prompts.encode("Answer:")) < MIN_QUESTION_TOKENS


def test_a_last_paragraph_too_long_for_the_question_block_is_cut(splitter):
    reserve = splitter.reserve
    lines = [text_of_tokens(10, seed=i) for i in range(20)]
    parts = splitter.split([{"role": "user", "content": "\n".join(lines)}])
    assert len(splitter.prompts.question_ids(parts.question)) <= reserve
    assert parts.question == "\n".join(lines[-len(parts.question.split("\n")) :])
    assert parts.documents == ["\n".join(lines[: 20 - len(parts.question.split("\n"))])]
    one_line = text_of_tokens(400)
    parts = splitter.split([{"role": "user", "content": one_line}])
    assert len(splitter.prompts.question_ids(parts.question)) <= reserve
    assert parts.documents[0] + parts.question == one_line


def test_a_long_prompt_is_answered_as_its_parts(engine, splitter):
    corpus = "\n\n".join(text_of_tokens(400, seed=i) for i in range(4))
    prompt = f"{corpus}\n\nWhat is the key here?"
    answer = engine.complete(prompt, max_new_tokens=4)
    parts = splitter.split([{"role": "user", "content": prompt}])
    assert answer.stats.chunks_total > 1
    assert (
        answer.token_ids
        == engine.generate(parts.documents, parts.question, max_new_tokens=4).token_ids
    )


def test_a_chat_over_a_context_keeps_its_turns_and_system_prompt(engine):
    documents = [text_of_tokens(500, seed=i) for i in range(3)]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "And the key?"},
    ]
    answer = engine.chat(messages, context=documents, max_new_tokens=4)
    expected = engine.generate(
        [*documents, "User: First question?", "Assistant: First answer."],
        "And the key?",
        system_prompt="Be brief.",
        max_new_tokens=4,
    )
    assert answer.token_ids == expected.token_ids
    assert answer.stats.context_tokens == expected.stats.context_tokens


def test_a_short_chat_without_context_runs_as_an_ordinary_prompt(engine):
    answer = engine.chat([{"role": "user", "content": "Hi"}], max_new_tokens=3)
    assert answer.stats.chunks_total == 0 and answer.stats.prompt_tokens > 0


def test_a_system_prompt_leads_every_chunk(engine):
    prefix = engine.prompts.prefix_with("Be brief.")
    assert prefix != engine.prompts.prefix_ids
    assert engine.tokenizer.decode(prefix).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    documents = [text_of_tokens(500, seed=i) for i in range(3)]
    cache = engine.encode(documents, system_prompt="Be brief.")
    assert cache.prefix_ids == prefix
    plain = engine.generate(documents, "Which?", max_new_tokens=4)
    briefed = engine.generate(documents, "Which?", system_prompt="Be brief.", max_new_tokens=4)
    assert engine.generate(cache, "Which?", max_new_tokens=4).token_ids == briefed.token_ids
    assert plain.stats.kv_entries_kept != briefed.stats.kv_entries_kept
    with pytest.raises(InvalidInputError, match="another system prompt"):
        engine.generate(cache, "Which?", system_prompt="Be long.")
    with pytest.raises(InvalidInputError, match="system_prompt"):
        engine.generate(documents, "Which?", system_prompt="  ")


def test_a_cache_keeps_its_system_prompt_when_saved(engine, tmp_path):
    documents = [text_of_tokens(500, seed=i) for i in range(3)]
    cache = engine.encode(documents, system_prompt="Be brief.")
    cache.save(tmp_path / "c.safetensors")
    loaded = engine.load_context_cache(tmp_path / "c.safetensors")
    assert loaded.prefix_ids == cache.prefix_ids
    assert isinstance(loaded, ContextCache)
    assert (
        engine.generate(loaded, "Which?", max_new_tokens=4).token_ids
        == engine.generate(cache, "Which?", max_new_tokens=4).token_ids
    )


def test_over_the_hard_limit_the_numbers_are_given(engine):
    with pytest.raises(
        ContextTooLongError, match=r"context has \d+ tokens, more than max_context_tokens=4000"
    ):
        engine.complete(text_of_tokens(4100) + "\n\nWhich?")


def test_relevance_is_a_share_for_every_chunk():
    engine = tiny_engine("llama", kv_budget=None, keep_chunks=1.0)
    spread = engine.generate(
        [text_of_tokens(400, seed=i) for i in range(3)], "Q?", max_new_tokens=2
    )
    relevance = [chunk.relevance for chunk in spread.stats.chunks]
    assert spread.stats.scorer == "nll" and len(relevance) == 3
    assert all(0.0 <= r <= 1.0 for r in relevance) and sum(relevance) == pytest.approx(1.0)
    single = engine.generate("short text", "Q?", max_new_tokens=2)
    assert [c.relevance for c in single.stats.chunks] == [1.0] and single.stats.scorer is None
