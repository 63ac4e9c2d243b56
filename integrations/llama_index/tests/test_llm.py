"""`ParallelCompLLM` gives the engine's own results through LlamaIndex's LLM interface."""

from __future__ import annotations

import asyncio

import llama_index.core
import pytest
from llama_index.core import Settings
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate
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
    llm = ParallelCompLLM(engine=engine)
    metadata = llm.metadata
    assert metadata.context_window == engine.context_window == 5000
    assert metadata.context_window > llm.native_window == engine.native_window == 512
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
    assert isinstance(response.raw["answer"], Answer)
    assert response.raw["answer"].token_ids == expected.token_ids

    streamed = list(llm.stream_complete(PROMPT))
    assert "".join(r.delta for r in streamed) == expected.text
    assert [r.text for r in streamed] == [
        "".join(r.delta for r in streamed[: i + 1]) for i in range(len(streamed))
    ]
    assert streamed[-1].raw["answer"].token_ids == expected.token_ids
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
    assert response.raw["answer"].token_ids == expected.token_ids
    streamed = list(llm.stream_chat(messages))
    assert "".join(r.delta for r in streamed) == expected.text
    assert streamed[-1].message.content == expected.text
    assert streamed[-1].raw["answer"].token_ids == expected.token_ids


def test_context_keyword_answers_over_documents(llm, engine):
    expected = engine.generate(DOCUMENTS, QUESTION)
    assert expected.stats.chunks_total == 3 and expected.stats.chunks_kept == 2
    completion = llm.complete(QUESTION, context=DOCUMENTS)
    chat = llm.chat([user(QUESTION)], context=DOCUMENTS)
    assert completion.text == chat.message.content == expected.text
    for response in (completion, chat):
        assert response.raw["answer"].token_ids == expected.token_ids
        assert response.raw["answer"].stats.chunks == expected.stats.chunks
    streamed = list(llm.stream_complete(QUESTION, context=DOCUMENTS))
    assert "".join(r.delta for r in streamed) == expected.text
    assert streamed[-1].raw["answer"].stats.kept_documents == expected.stats.kept_documents


def test_a_chat_with_context_is_cut_by_the_engine(llm, engine):
    turns = [
        {"role": "user", "content": "Which one is long?"},
        {"role": "assistant", "content": "The second."},
        {"role": "user", "content": QUESTION},
    ]
    expected = engine.chat(turns, context=DOCUMENTS)
    messages = [ChatMessage(role=turn["role"], content=turn["content"]) for turn in turns]
    response = llm.chat(messages, context=DOCUMENTS)
    assert response.raw["answer"].token_ids == expected.token_ids
    # The earlier turns are context documents after the given ones.
    assert response.raw["answer"].stats.context_tokens > sum(map(engine.count_tokens, DOCUMENTS))


def test_prompts_longer_than_the_trained_window_are_answered(llm, engine):
    prompt = text_of_tokens(1200) + "\n\n" + QUESTION
    expected = engine.complete(prompt)
    assert expected.stats.chunks_total > 1
    assert llm.complete(prompt).raw["answer"].token_ids == expected.token_ids
    assert (
        llm.chat([user(prompt)]).raw["answer"].token_ids
        == engine.chat([{"role": "user", "content": prompt}]).token_ids
    )


def test_system_prompt_with_context_leads_every_chunk(wide_engine):
    llm = ParallelCompLLM(engine=wide_engine, max_new_tokens=8)
    expected = wide_engine.generate(
        DOCUMENTS, QUESTION, system_prompt="Answer briefly.", max_new_tokens=8
    )
    without = wide_engine.generate(DOCUMENTS, QUESTION, max_new_tokens=8)
    assert expected.stats.prompt_tokens > without.stats.prompt_tokens
    response = llm.complete(QUESTION, context=DOCUMENTS, system_prompt="Answer briefly.")
    assert response.raw["answer"].token_ids == expected.token_ids


QA_TEMPLATE = PromptTemplate("Read these.\n{context_str}\nNow answer: {query_str}")
CHAT_QA_TEMPLATE = ChatPromptTemplate.from_messages(
    [
        ("system", "You answer from documents."),
        ("user", "Documents:\n{context_str}\n\nQuestion: {query_str}"),
    ]
)


@pytest.mark.parametrize(
    "template, system_prompt, question",
    [
        (QA_TEMPLATE, "Read these.", "Now answer: " + QUESTION),
        (CHAT_QA_TEMPLATE, "You answer from documents.\n\nDocuments:", "Question: " + QUESTION),
    ],
    ids=["prompt", "chat"],
)
def test_predict_sends_the_context_argument_as_context(
    wide_engine, template, system_prompt, question
):
    llm = ParallelCompLLM(engine=wide_engine, max_new_tokens=8)
    expected = wide_engine.generate(
        DOCUMENTS, question, system_prompt=system_prompt, max_new_tokens=8
    ).text
    args = {"context_str": DOCUMENTS, "query_str": QUESTION}
    assert llm.predict(template, **args) == expected
    assert "".join(llm.stream(template, **args)) == expected

    async def run():
        streamed = [token async for token in await llm.astream(template, **args)]
        return await llm.apredict(template, **args), "".join(streamed)

    assert asyncio.run(run()) == (expected, expected)


def test_predict_cuts_the_prompt_as_llama_index_renders_it(wide_engine):
    # A model without chat template gets the prompt as text, with the LLM's system prompt first.
    plain = ParallelCompEngine(
        tiny_model(window=2048),
        tiny_tokenizer(chat_template=False),
        ParallelCompConfig(**(TINY_SETTINGS | {"question_reserve_tokens": 200})),
    )
    llm = ParallelCompLLM(engine=plain, max_new_tokens=8, system_prompt="Be exact.")
    expected = plain.generate(
        DOCUMENTS,
        "Now answer: " + QUESTION,
        system_prompt="Be exact.\n\nRead these.",
        max_new_tokens=8,
    )
    assert llm.predict(QA_TEMPLATE, context_str=DOCUMENTS, query_str=QUESTION) == expected.text
    # The refine template's context is `context_msg`; `query_str` may come partially formatted.
    refine = PromptTemplate("{context_msg}\nQuery: {query_str}\nOriginal: {existing_answer}")
    llm = ParallelCompLLM(engine=wide_engine, max_new_tokens=8)
    expected = wide_engine.generate(
        DOCUMENTS[0], f"Query: {QUESTION}\nOriginal: none", max_new_tokens=8
    )
    partial = refine.partial_format(query_str=QUESTION)
    assert llm.predict(partial, context_msg=DOCUMENTS[0], existing_answer="none") == expected.text


def test_predict_without_a_context_argument_is_llama_indexs(llm, engine):
    template = PromptTemplate("Say {word}.")
    expected = engine.chat([{"role": "user", "content": "Say hello."}]).text
    assert llm.predict(template, word="hello") == expected
    assert "".join(llm.stream(template, word="hello")) == expected


def test_token_counting_handler_reads_the_engines_counts(engine):
    counter = TokenCountingHandler()
    llm = ParallelCompLLM(engine=engine, callback_manager=CallbackManager([counter]))
    answers = [
        llm.complete(PROMPT).raw["answer"],
        llm.complete(QUESTION, context=DOCUMENTS).raw["answer"],
        list(llm.stream_complete(QUESTION, context=DOCUMENTS))[-1].raw["answer"],
        llm.chat([user(PROMPT)]).raw["answer"],
        list(llm.stream_chat([user(QUESTION)], context=DOCUMENTS))[-1].raw["answer"],
    ]
    expected = [(a.stats.prompt_tokens, a.stats.new_tokens) for a in answers]
    assert all(prompt > 0 and completion > 0 for prompt, completion in expected)
    counted = [(e.prompt_token_count, e.completion_token_count) for e in counter.llm_token_counts]
    assert counted == expected
    assert counter.prompt_llm_token_count == sum(prompt for prompt, _ in expected)
    assert counter.completion_llm_token_count == sum(completion for _, completion in expected)


def test_per_call_decoding_arguments(llm, engine):
    short = engine.complete(PROMPT, max_new_tokens=5)
    assert len(short.token_ids) <= 5
    assert llm.complete(PROMPT, max_tokens=5).raw["answer"].token_ids == short.token_ids
    assert llm.complete(PROMPT, max_new_tokens=5).raw["answer"].token_ids == short.token_ids

    sampled = engine.complete(PROMPT, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    response = llm.complete(PROMPT, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    assert response.raw["answer"].token_ids == sampled.token_ids

    generated = engine.generate(DOCUMENTS, QUESTION, max_new_tokens=4, temperature=0.7, seed=1)
    response = llm.complete(QUESTION, context=DOCUMENTS, max_tokens=4, temperature=0.7, seed=1)
    assert response.raw["answer"].token_ids == generated.token_ids


def test_fields_are_defaults_that_calls_override(engine):
    llm = ParallelCompLLM(engine=engine, max_new_tokens=6, temperature=1.0, seed=3)
    assert (
        llm.complete(PROMPT).raw["answer"].token_ids
        == engine.complete(PROMPT, max_new_tokens=6, temperature=1.0, seed=3).token_ids
    )
    assert (
        llm.complete(PROMPT, max_tokens=2, temperature=0.0).raw["answer"].token_ids
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
        (lambda llm: llm.complete(PROMPT, system_prompt="Be brief."), InvalidInputError),
        (lambda llm: llm.complete(QUESTION, context=""), InvalidInputError),
        (lambda llm: llm.complete(QUESTION, context=["ok", 3]), InvalidInputError),
        (lambda llm: llm.complete(QUESTION, context="x" * 5001), ContextTooLongError),
        (lambda llm: llm.complete("", context=DOCUMENTS), InvalidInputError),
        (lambda llm: llm.chat([]), InvalidInputError),
        (lambda llm: llm.chat([user(QUESTION)], context="x" * 5001), ContextTooLongError),
        (lambda llm: llm.complete("x" * 5001 + "\n\n" + QUESTION), ContextTooLongError),
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
