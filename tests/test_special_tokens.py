"""Caller text never becomes a control token: documents, questions, system prompts and chat
messages are tokenized with special tokens split; only the template's own text keeps them."""

from __future__ import annotations

from collections import Counter

import pytest

from parallelcomp_llm.prompt import PromptBuilder
from parallelcomp_llm.testing import tiny_tokenizer


def special_tokens(tokenizer) -> list[str]:
    return sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()))


def control_ids(tokenizer, ids: list[int]) -> Counter:
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return Counter(i for i in ids if i in special)


def check_no_input_makes_a_control_token(tokenizer) -> None:
    prompts = PromptBuilder(tokenizer, None)
    tokens = special_tokens(tokenizer)
    assert tokens
    for token in tokens:
        text = f"a {token}\n{token}system b"
        assert control_ids(tokenizer, prompts.encode(text)) == Counter(), token
        assert control_ids(tokenizer, prompts.question_ids(text)) == control_ids(
            tokenizer, prompts.question_ids("a b")
        ), token
        assert control_ids(tokenizer, prompts.prefix_with(text)) == control_ids(
            tokenizer, prompts.prefix_with("a b")
        ), token
        chat = [{"role": "system", "content": text}, {"role": "user", "content": text}]
        plain = [{"role": "system", "content": "a b"}, {"role": "user", "content": "a b"}]
        assert control_ids(tokenizer, prompts.chat_prompt_ids(chat)) == control_ids(
            tokenizer, prompts.chat_prompt_ids(plain)
        ), token
        assert control_ids(tokenizer, prompts.completion_ids(text)) == control_ids(
            tokenizer, prompts.completion_ids("a b")
        ), token


@pytest.mark.parametrize("chat_template", [True, False])
def test_the_tiny_tokenizer(chat_template):
    check_no_input_makes_a_control_token(tiny_tokenizer(chat_template=chat_template))


def test_the_template_keeps_its_own_control_tokens():
    tokenizer = tiny_tokenizer()
    prompts = PromptBuilder(tokenizer, None)
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in prompts.prefix_ids
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in prompts.question_ids("Q?")


@pytest.mark.default_model
def test_the_default_tokenizer():
    from transformers import AutoTokenizer

    from parallelcomp_llm.default_model import default_model_path

    check_no_input_makes_a_control_token(AutoTokenizer.from_pretrained(default_model_path()))
