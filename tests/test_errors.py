"""Bad input gives the package's own errors, before any model work."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from parallelcomp_llm import (
    ContextTooLongError,
    InvalidConfigError,
    InvalidInputError,
    ParallelCompConfig,
    ParallelCompEngine,
    ParallelCompError,
    UnsupportedModelError,
)
from parallelcomp_llm.testing import text_of_tokens, tiny_engine, tiny_tokenizer


@pytest.fixture(scope="module")
def engine():
    engine = tiny_engine("llama", max_context_tokens=5000)

    def refuse(*args, **kwargs):
        raise AssertionError("the model ran before the input was checked")

    engine.model.register_forward_pre_hook(refuse)
    return engine


@pytest.mark.parametrize(
    "context, question, kwargs, error",
    [
        ("some text", "", {}, InvalidInputError),
        ("some text", "   \n", {}, InvalidInputError),
        ("", "Q?", {}, InvalidInputError),
        ("  \n\t ", "Q?", {}, InvalidInputError),
        ([], "Q?", {}, InvalidInputError),
        (["", "  "], "Q?", {}, InvalidInputError),
        (["ok", 3], "Q?", {}, InvalidInputError),
        (b"bytes", "Q?", {}, InvalidInputError),
        (42, "Q?", {}, InvalidInputError),
        ("x" * 5001, "Q?", {}, ContextTooLongError),
        ("text", "Q?", {"max_new_tokens": 0}, InvalidInputError),
        ("text", "Q?", {"max_new_tokens": 10_000}, InvalidInputError),
        ("text", "Q" * 480, {}, InvalidInputError),
        ("text", "Q?", {"temperature": -1}, InvalidInputError),
        ("text", "Q?", {"top_p": 0}, InvalidInputError),
        ("text", "Q?", {"stop": [""]}, InvalidInputError),
        ("text", "Q?", {"stop": [3]}, InvalidInputError),
        ("text", b"Q?", {}, InvalidInputError),
        ("abc\udc80", "Q?", {}, InvalidInputError),
        ("text", "Q\ud800?", {}, InvalidInputError),
        ("text", "Q?", {"stop": ["x"] * 65}, InvalidInputError),
        ("text", "Q?", {"stop": ["x" * 1001]}, InvalidInputError),
        ("text", "Q?", {"stop": 5}, InvalidInputError),
        ("text", "Q?", {"temperature": float("nan")}, InvalidInputError),
        ("text", "Q?", {"temperature": 1e-39}, InvalidInputError),
        ("text", "Q?", {"temperature": "1.0"}, InvalidInputError),
        ("text", "Q?", {"seed": "7"}, InvalidInputError),
        ("text", "Q?", {"seed": 1.5}, InvalidInputError),
        ("text", "Q?", {"seed": True}, InvalidInputError),
        ("text", "Q?", {"seed": 2**63}, InvalidInputError),
        ("text", "Q?", {"top_k": True}, InvalidInputError),
        ("text", "Q?", {"frobnicate": 1}, InvalidInputError),
        ("text", "Q?", {"timeout_s": float("inf")}, InvalidInputError),
    ],
    ids=lambda value: repr(value)[:20] if isinstance(value, (str, list, bytes, int)) else None,
)
def test_bad_input_is_refused_before_model_work(engine, context, question, kwargs, error):
    with pytest.raises(error) as raised:
        engine.generate(context, question, **kwargs)
    assert isinstance(raised.value, ParallelCompError)
    with pytest.raises(error):
        engine.stream(context, question, **kwargs)


def test_long_context_is_refused_not_truncated(engine):
    with pytest.raises(ContextTooLongError, match="5001 tokens"):
        engine.generate(text_of_tokens(5001), "Q?")


@pytest.mark.parametrize(
    "settings",
    [
        {"kv_budget": 0},
        {"chunk_tokens": -1},
        {"chunk_room_fraction": 0.0},
        {"chunk_room_fraction": 1.5},
        {"chunk_batch_size": 0},
        {"keep_chunks": 0},
        {"keep_chunks": 1.5},
        {"observation_window": 0},
        {"pooling_kernel": 4},
        {"calibration_layers": (3, 1)},
        {"calibration_threshold": 0.5},
        {"calibration_threshold": float("inf")},
        {"request_timeout_s": float("inf")},
        {"request_timeout_s": float("nan")},
        {"max_context_tokens": 0},
        {"device": "tpu"},
        {"no_such_setting": 1},
    ],
)
def test_nonsensical_settings(settings):
    with pytest.raises(InvalidConfigError):
        ParallelCompConfig(**settings)


def test_settings_that_do_not_fit_the_model():
    with pytest.raises(InvalidConfigError, match="trained window"):
        tiny_engine("llama", window=512, chunk_tokens=600)
    with pytest.raises(InvalidConfigError, match="layers"):
        tiny_engine("llama", calibration_layers=(0, 5))
    with pytest.raises(InvalidConfigError, match="trained window"):
        tiny_engine("llama", window=256, question_reserve_tokens=200, answer_reserve_tokens=100)


def test_unsupported_architecture_is_named():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260))
    with pytest.raises(UnsupportedModelError, match="gpt2.*llama, mistral, qwen2"):
        ParallelCompEngine(model, tiny_tokenizer())


def test_unsupported_architecture_from_a_path(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260)).save_pretrained(
        tmp_path
    )
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError):
        ParallelCompEngine.from_pretrained(tmp_path)


def test_bad_chat_and_prompt_input(engine):
    with pytest.raises(InvalidInputError):
        engine.complete("   ")
    with pytest.raises(InvalidInputError):
        engine.chat([])
    with pytest.raises(InvalidInputError):
        engine.chat([{"role": "user"}])


def test_prompt_longer_than_the_hard_limit_is_refused_before_model_work(engine):
    long = text_of_tokens(5200)
    with pytest.raises(ContextTooLongError, match="more than max_context_tokens=5000"):
        engine.stream_complete(long)
    with pytest.raises(ContextTooLongError, match="more than max_context_tokens=5000"):
        engine.stream_chat([{"role": "user", "content": long}])
    assert not isinstance(ContextTooLongError("x"), ValueError)
    assert not isinstance(InvalidInputError("x"), ValueError)


def test_a_huge_text_is_refused_before_it_is_tokenized(engine):
    huge = ["x" * (5000 * engine.prompts.max_token_characters + 1)]
    with pytest.raises(ContextTooLongError, match="characters, so more than max_context_tokens"):
        engine.generate(huge, "Q?")


def test_separators_between_packed_documents_count_against_the_limit(engine):
    documents = ["ab"] * 2000
    with pytest.raises(ContextTooLongError, match="separators"):
        engine.generate(documents, "Q?")


def test_count_tokens_refuses_a_huge_text_before_tokenizing_it(engine):
    huge = "x" * (5000 * engine.prompts.max_token_characters + 1)
    with pytest.raises(ContextTooLongError, match="text has .* characters"):
        engine.count_tokens(huge)


def test_count_tokens_takes_only_text(engine):
    with pytest.raises(InvalidInputError, match="got NoneType"):
        engine.count_tokens(None)
    with pytest.raises(InvalidInputError, match="lone surrogate at character 3"):
        engine.count_tokens("abc\udc80")
    with pytest.raises(InvalidInputError, match="got bytes"):
        engine.generate("text", b"Q?")
