"""`ParallelCompLLM` gives the engine's own results through LlamaIndex's LLM interface."""

from __future__ import annotations

import llama_index.core
import pytest
from llama_index.core import Settings
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.llms.parallelcomp import ParallelCompLLM

from parallelcomp_llm import (
    Answer,
    ContextTooLongError,
    InvalidInputError,
    ParallelCompConfig,
    ParallelCompEngine,
    ParallelCompError,
)
from parallelcomp_llm.testing import TINY_SETTINGS, text_of_tokens, tiny_model, tiny_tokenizer

PROMPT = "Once upon a time"
DOCUMENTS = [text_of_tokens(300, seed=1), text_of_tokens(300, seed=2), text_of_tokens(300, seed=3)]
QUESTION = "Which document?"


def user(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, content=text)


def test_metadata_reports_the_extrapolated_window(engine):
    metadata = ParallelCompLLM(engine=engine).metadata
    assert metadata.context_window == engine.context_window == 5000
    assert metadata.context_window > engine.native_window == 512
    assert metadata.num_output == engine.config.answer_reserve_tokens == 32
    assert metadata.is_chat_model is True
    assert metadata.model_name == "parallelcomp"
    named = ParallelCompLLM(engine=engine, max_new_tokens=7, model_name="tiny").metadata
    assert (named.num_output, named.model_name) == (7, "tiny")


def test_a_model_without_chat_template_is_not_a_chat_model():
    engine = ParallelCompEngine(
        tiny_model(), tiny_tokenizer(chat_template=False), ParallelCompConfig(**TINY_SETTINGS)
    )
    assert ParallelCompLLM(engine=engine).metadata.is_chat_model is False


def test_complete_and_stream_complete_match_the_engine(llm, engine):
    expected = engine.complete(PROMPT)
    response = llm.complete(PROMPT)
    assert response.text == expected.text
    assert isinstance(response.raw, Answer)
    assert response.raw.token_ids == expected.token_ids

    streamed = list(llm.stream_complete(PROMPT))
    assert "".join(r.delta for r in streamed) == expected.text
    assert [r.text for r in streamed] == [
        "".join(r.delta for r in streamed[: i + 1]) for i in range(len(streamed))
    ]
    assert streamed[-1].raw.token_ids == expected.token_ids
    assert all(r.raw is None for r in streamed[:-1])


def test_completion_to_prompt_wraps_unformatted_prompts_only(engine):
    llm = ParallelCompLLM(engine=engine, completion_to_prompt=lambda p: f"Q: {p}\nA:")
    assert llm.complete(PROMPT).text == engine.complete(f"Q: {PROMPT}\nA:").text
    assert llm.complete(PROMPT, formatted=True).text == engine.complete(PROMPT).text
    # With context the engine builds the prompt around the question itself.
    answer = engine.generate(DOCUMENTS, QUESTION, max_new_tokens=4)
    assert llm.complete(QUESTION, context=DOCUMENTS, max_tokens=4).text == answer.text


def test_chat_and_stream_chat_apply_the_chat_template(llm, engine):
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        user("Hello"),
        ChatMessage(role=MessageRole.ASSISTANT, content="Hi."),
        user("Tell me more."),
    ]
    expected = engine.chat([{"role": m.role.value, "content": m.content} for m in messages])
    assert expected.text != engine.complete("Be brief.\n\nHello\n\nHi.\n\nTell me more.").text
    response = llm.chat(messages)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == expected.text
    assert response.raw.token_ids == expected.token_ids
    streamed = list(llm.stream_chat(messages))
    assert "".join(r.delta for r in streamed) == expected.text
    assert streamed[-1].message.content == expected.text
    assert streamed[-1].raw.token_ids == expected.token_ids


def test_context_keyword_answers_over_documents(llm, engine):
    expected = engine.generate(DOCUMENTS, QUESTION)
    assert expected.stats.chunks_total == 3 and expected.stats.chunks_kept == 2
    completion = llm.complete(QUESTION, context=DOCUMENTS)
    chat = llm.chat([user(QUESTION)], context=DOCUMENTS)
    assert completion.text == chat.message.content == expected.text
    for response in (completion, chat):
        assert response.raw.token_ids == expected.token_ids
        assert response.raw.stats.chunks == expected.stats.chunks
    streamed = list(llm.stream_complete(QUESTION, context=DOCUMENTS))
    assert "".join(r.delta for r in streamed) == expected.text
    assert streamed[-1].raw.stats.kept_documents == expected.stats.kept_documents


def test_per_call_decoding_arguments(llm, engine):
    short = engine.complete(PROMPT, max_new_tokens=5)
    assert len(short.token_ids) <= 5
    assert llm.complete(PROMPT, max_tokens=5).raw.token_ids == short.token_ids
    assert llm.complete(PROMPT, max_new_tokens=5).raw.token_ids == short.token_ids

    sampled = engine.complete(PROMPT, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    response = llm.complete(PROMPT, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    assert response.raw.token_ids == sampled.token_ids

    generated = engine.generate(DOCUMENTS, QUESTION, max_new_tokens=4, temperature=0.7, seed=1)
    response = llm.complete(QUESTION, context=DOCUMENTS, max_tokens=4, temperature=0.7, seed=1)
    assert response.raw.token_ids == generated.token_ids


def test_fields_are_defaults_that_calls_override(engine):
    llm = ParallelCompLLM(engine=engine, max_new_tokens=6, temperature=1.0, seed=3)
    assert (
        llm.complete(PROMPT).raw.token_ids
        == engine.complete(PROMPT, max_new_tokens=6, temperature=1.0, seed=3).token_ids
    )
    assert (
        llm.complete(PROMPT, max_tokens=2, temperature=0.0).raw.token_ids
        == engine.complete(PROMPT, max_new_tokens=2).token_ids
    )


def _stop_in(text: str) -> str:
    """A printable ASCII character of `text` after its start, to stop on."""
    return next(c for c in text[1:] if c.isascii() and c.isprintable())


def test_stop_strings_end_the_answer(llm, engine):
    full = engine.complete(PROMPT).text
    stop = _stop_in(full)
    expected = full[: full.index(stop)]
    assert engine.complete(PROMPT, stop=stop).text == expected
    assert llm.complete(PROMPT, stop=[stop]).text == expected
    assert "".join(r.delta for r in llm.stream_complete(PROMPT, stop=stop)) == expected
    assert ParallelCompLLM(engine=engine, stop=[stop]).complete(PROMPT).text == expected

    answer = engine.generate(DOCUMENTS, QUESTION).text
    stop = _stop_in(answer)
    assert llm.complete(QUESTION, context=DOCUMENTS, stop=stop).text == answer[: answer.index(stop)]


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda llm: llm.complete(""), InvalidInputError),
        (lambda llm: llm.complete(PROMPT, temperature=-1), InvalidInputError),
        (lambda llm: llm.complete(PROMPT, max_tokens=0), InvalidInputError),
        (lambda llm: llm.complete(PROMPT, stop=[""]), InvalidInputError),
        (lambda llm: llm.complete(PROMPT, max_tokens=3, max_new_tokens=3), InvalidInputError),
        (lambda llm: llm.complete(PROMPT, frequency_penalty=1.0), InvalidInputError),
        (lambda llm: llm.complete("x" * 600), InvalidInputError),
        (lambda llm: llm.complete(QUESTION, context=""), InvalidInputError),
        (lambda llm: llm.complete(QUESTION, context=["ok", 3]), InvalidInputError),
        (lambda llm: llm.complete(QUESTION, context="x" * 5001), ContextTooLongError),
        (lambda llm: llm.complete("", context=DOCUMENTS), InvalidInputError),
        (lambda llm: llm.chat([]), InvalidInputError),
        (lambda llm: llm.chat([user("a"), user("b")], context=DOCUMENTS), InvalidInputError),
        (lambda llm: list(llm.stream_complete("x" * 600)), InvalidInputError),
        (lambda llm: list(llm.stream_chat([user("Hi")], top_p=0)), InvalidInputError),
    ],
)
def test_bad_input_raises_the_engines_errors(llm, call, error):
    with pytest.raises(error) as raised:
        call(llm)
    assert isinstance(raised.value, ParallelCompError)


def test_streams_check_their_context_before_the_first_delta(llm):
    with pytest.raises(ContextTooLongError):
        llm.stream_complete(QUESTION, context="x" * 5001)
    with pytest.raises(InvalidInputError):
        llm.stream_chat([user(QUESTION)], context=[])


def test_settings_tokenizer_counts_the_models_tokens(llm, monkeypatch):
    monkeypatch.setattr(llama_index.core, "global_tokenizer", llama_index.core.global_tokenizer)
    Settings.tokenizer = llm.tokenizer
    text = "Grüße aus Köln, 東京!"
    assert len(Settings.tokenizer(text)) == llm.engine.count_tokens(text) == len(text.encode())
