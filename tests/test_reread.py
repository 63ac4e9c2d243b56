"""`kept_chunks="reread"`: the kept chunks, read again as one ordinary prompt, give the tokens
plain transformers decodes over that prompt, and the answer over the kept documents alone; when
they do not fit the trained window, the answer is the merged one."""

from __future__ import annotations

import pytest
import torch

from parallelcomp_llm import InvalidConfigError, ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.stages import BiasCalibrator
from parallelcomp_llm.testing import (
    TINY_SETTINGS,
    text_of_tokens,
    tiny_engine,
    tiny_model,
    tiny_tokenizer,
)

QUESTION = "Which part holds it?"
LONG_QUESTION = "Which part of all these parts holds the thing that we look for?"
NEW_TOKENS = 6
DOC_TOKENS = 50
DOCS = [text_of_tokens(DOC_TOKENS, seed=i) for i in range(8)]
"""Eight documents, each a chunk of its own (`chunk_tokens=DOC_TOKENS`)."""
SETTINGS = {
    "chunk_tokens": DOC_TOKENS,
    "keep_chunks": 3,
    "context_cache_host_fraction": 0.0,
}


def engine_with(**settings):
    return tiny_engine("llama", **(SETTINGS | settings))


def greedy_tokens(engine, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """What transformers' own greedy `generate` continues `prompt_ids` with."""
    inputs = torch.tensor([prompt_ids])
    output = engine.model.generate(
        inputs,
        attention_mask=torch.ones_like(inputs),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
    )
    return output[0, len(prompt_ids) :].tolist()


def reread_prompt(engine, documents: list[str], question: str) -> list[int]:
    """The template prefix, the documents joined by the separator, and the question block."""
    prompts = engine.prompts
    context = engine.config.document_separator.join(documents)
    return prompts.prefix_ids + prompts.encode(context) + prompts.question_ids(question)


def test_reread_answer_is_plain_attention_over_the_kept_documents():
    engine = engine_with(kept_chunks="reread")
    answer = engine.generate(DOCS, QUESTION, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    kept = answer.stats.kept_documents
    assert answer.stats.reread and len(kept) == 3 and answer.stats.chunks_total == len(DOCS)
    prompt = reread_prompt(engine, [DOCS[index] for index in kept], QUESTION)
    assert answer.token_ids == greedy_tokens(engine, prompt, NEW_TOKENS)
    assert answer.stats.prompt_tokens == len(prompt)
    alone = engine.generate(
        [DOCS[index] for index in kept], QUESTION, max_new_tokens=NEW_TOKENS, ignore_eos=True
    )
    assert alone.token_ids == answer.token_ids


def test_pieces_of_one_document_are_joined_as_tokenized():
    engine = engine_with(kept_chunks="reread", keep_chunks=2)
    document = text_of_tokens(2 * DOC_TOKENS, seed=3)
    answer = engine.generate([document], QUESTION, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    assert answer.stats.reread and answer.stats.chunks_total == 2
    prompt = reread_prompt(engine, [document], QUESTION)
    assert answer.token_ids == greedy_tokens(engine, prompt, NEW_TOKENS)


def test_kept_chunks_that_do_not_fit_are_merged():
    documents = [text_of_tokens(DOC_TOKENS, seed=i) for i in range(10)]
    merged = engine_with(kept_chunks="merge", keep_chunks=10)
    reread = engine_with(kept_chunks="reread", keep_chunks=10)
    options = {"max_new_tokens": NEW_TOKENS, "ignore_eos": True}
    expected = merged.generate(documents, QUESTION, **options)
    answer = reread.generate(documents, QUESTION, **options)
    assert not answer.stats.reread and answer.token_ids == expected.token_ids
    assert answer.stats.kv_entries_kept == expected.stats.kv_entries_kept


def test_a_batch_of_reread_and_merged_rows_answers_each_as_alone():
    """With the long question the three kept chunks no longer fit the window of 512."""
    engine = engine_with(kept_chunks="reread", chunk_tokens=140, keep_chunks=3)
    documents = [text_of_tokens(140, seed=i) for i in range(6)]
    options = {"max_new_tokens": 24, "ignore_eos": True}
    alone = [engine.generate(documents, q, **options) for q in (QUESTION, LONG_QUESTION)]
    assert [a.stats.reread for a in alone] == [True, False]
    batch = engine.generate_batch(documents, [QUESTION, LONG_QUESTION], **options)
    assert [a.token_ids for a in batch] == [a.token_ids for a in alone]
    assert [a.stats.reread for a in batch] == [True, False]


def test_reread_over_an_encoded_context_and_over_a_static_cache():
    engine = engine_with(kept_chunks="reread")
    options = {"max_new_tokens": NEW_TOKENS, "ignore_eos": True}
    expected = engine.generate(DOCS, QUESTION, **options).token_ids
    cached = engine.generate(engine.encode(DOCS), QUESTION, **options)
    assert cached.stats.context_cache_hit and cached.token_ids == expected
    static = engine_with(kept_chunks="reread", decode_step="static")
    assert static.generate(DOCS, QUESTION, **options).token_ids == expected


def test_a_context_of_one_chunk_is_read_whole():
    engine = engine_with(kept_chunks="reread", chunk_tokens=None, kv_budget=16)
    document = text_of_tokens(200, seed=5)
    answer = engine.generate([document], QUESTION, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    assert answer.stats.reread and answer.stats.chunks_total == 1
    prompt = reread_prompt(engine, [document], QUESTION)
    assert answer.stats.kv_entries_kept == len(prompt) - len(engine.prompts.question_ids(QUESTION))
    assert answer.token_ids == greedy_tokens(engine, prompt, NEW_TOKENS)


def test_the_default_reads_the_three_best_chunks_again_unless_it_calibrates():
    assert ParallelCompConfig().with_reading_resolved(False).chunk_room_fraction == 0.0625
    assert ParallelCompConfig().with_reading_resolved(True).chunk_room_fraction == 0.25
    plain = tiny_engine("llama", chunk_tokens=DOC_TOKENS)
    assert (plain.config.kept_chunks, plain.config.keep_chunks) == ("reread", 3)
    answer = plain.generate(DOCS, QUESTION, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    assert answer.stats.reread and answer.stats.chunks_kept == 3
    best = engine_with(kept_chunks="reread", keep_chunks=3)
    assert best.generate(DOCS, QUESTION, max_new_tokens=NEW_TOKENS, ignore_eos=True).token_ids == (
        answer.token_ids
    )
    calibrated = tiny_engine("llama", calibration_layers=(0, 1))
    assert (calibrated.config.kept_chunks, calibrated.config.keep_chunks) == ("merge", 3)
    given = ParallelCompEngine(
        tiny_model("llama"),
        tiny_tokenizer(),
        ParallelCompConfig(**TINY_SETTINGS),
        calibrator=BiasCalibrator(layers=(0, 1)),
    )
    assert given.config.kept_chunks == "merge"
    assert tiny_engine("llama", kept_chunks="merge").config.keep_chunks == 3


def test_reread_with_calibration_is_refused():
    with pytest.raises(InvalidConfigError, match="kept_chunks='merge'"):
        engine_with(kept_chunks="reread", calibration_layers=(0, 1))


def test_the_reread_stage_is_traced():
    seen = []
    config = ParallelCompConfig(**(TINY_SETTINGS | SETTINGS | {"kept_chunks": "reread"}))
    observer = lambda stage, phase: seen.append(stage)  # noqa: E731
    engine = ParallelCompEngine(tiny_model("llama"), tiny_tokenizer(), config, observer=observer)
    engine.generate(DOCS, QUESTION, max_new_tokens=2)
    assert "reread" in seen and "merge" not in seen and "kv_selection" not in seen
