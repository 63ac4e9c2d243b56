"""Correctness anchor: one chunk without eviction is exactly plain `model.generate`."""

from __future__ import annotations

import torch

from parallelcomp_llm import ParallelCompConfig, ParallelCompEngine
from parallelcomp_llm.attention import AttentionProbe
from parallelcomp_llm.prefill import prefill_rows, question_pass
from parallelcomp_llm.testing import (
    TINY_SETTINGS,
    text_of_tokens,
    tiny_engine,
    tiny_model,
    tiny_tokenizer,
)


def plain_greedy(engine: ParallelCompEngine, prompt_ids: list[int], new_tokens: int) -> list[int]:
    output = engine.model.generate(
        torch.tensor([prompt_ids]),
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=engine.tokenizer.pad_token_id,
    )
    return output[0, len(prompt_ids) :].tolist()


def test_one_chunk_matches_model_generate(architecture):
    engine = tiny_engine(architecture, kv_budget=None)
    context, question = text_of_tokens(300), "What is written?"
    answer = engine.generate(context, question, max_new_tokens=24, ignore_eos=True)
    prompt = (
        engine.prompts.prefix_ids
        + engine.prompts.encode(context)
        + engine.prompts.question_ids(question)
    )
    assert answer.stats.chunks_total == 1
    expected = plain_greedy(engine, prompt, len(answer.token_ids))
    assert answer.token_ids == expected
    assert len(answer.token_ids) > 0


def test_one_chunk_matches_without_chat_template(architecture):
    tokenizer = tiny_tokenizer(chat_template=False)
    config = ParallelCompConfig(kv_budget=None, **TINY_SETTINGS)
    engine = ParallelCompEngine(tiny_model(architecture, seed=3), tokenizer, config)
    context, question = text_of_tokens(200, seed=2), "Who?"
    answer = engine.generate(context, question, max_new_tokens=16, ignore_eos=True)
    prompt = (
        [tokenizer.bos_token_id]
        + engine.prompts.encode(context)
        + engine.prompts.question_ids(question)
    )
    assert prompt[: len(engine.prompts.prefix_ids)] == engine.prompts.prefix_ids
    assert answer.token_ids == plain_greedy(engine, prompt, 16)


def test_complete_matches_model_generate():
    engine = tiny_engine("qwen2")
    answer = engine.complete("Once upon a time", max_new_tokens=12, ignore_eos=True)
    prompt = engine.prompts.encode("Once upon a time")
    assert answer.token_ids == plain_greedy(engine, prompt, 12)
    assert answer.finish_reason == "length"


def test_batch_size_does_not_change_the_answer():
    context = [text_of_tokens(350, seed=s) for s in range(5)]
    answers = [
        tiny_engine("llama", chunk_batch_size=size, keep_chunks=2, kv_budget=128).generate(
            context, "Which one?", max_new_tokens=12
        )
        for size in (1, 2, 5)
    ]
    assert answers[0].token_ids == answers[1].token_ids == answers[2].token_ids
    scores = [[c.relevance for c in a.stats.chunks] for a in answers]
    for other in scores[1:]:
        assert torch.allclose(torch.tensor(scores[0]), torch.tensor(other), atol=1e-4)


def test_padded_rows_match_rows_run_alone(architecture):
    engine = tiny_engine(architecture)
    rows = [engine.prompts.encode(text_of_tokens(n, seed=n)) for n in (120, 97, 64)]
    question = engine.prompts.question_ids("And then?")
    batch = prefill_rows(engine.model, rows, engine.pad_token_id, [0, 1, 2])
    batch_logits = question_pass(
        engine.model, batch, question, AttentionProbe(windows=[4]), engine.pad_token_id
    )
    for index, row in enumerate(rows):
        alone = prefill_rows(engine.model, [row], engine.pad_token_id, [index])
        for keys, alone_keys in zip(batch.keys, alone.keys, strict=True):
            assert torch.allclose(keys[index, :, : len(row)], alone_keys[0], atol=1e-5)
        logits = question_pass(
            engine.model, alone, question, AttentionProbe(windows=[4]), engine.pad_token_id
        )
        assert torch.allclose(batch_logits[index], logits[0], atol=1e-4)
