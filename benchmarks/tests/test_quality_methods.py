"""The quality-evaluation methods: registry, agreement with the engine and with transformers on
prompts that fit, truncation, RoPE scaling, sink-window re-rotation, memory errors."""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any

import pytest
import torch
from parallelcomp_bench.quality.baselines import ItemPrompt, truncate_middle
from parallelcomp_bench.quality.device_costs import freeing_memory_on_failure
from parallelcomp_bench.quality.items import Item
from parallelcomp_bench.quality.methods import METHOD_NAMES, make_method
from parallelcomp_bench.quality.rope_scaling import RopeScaling
from parallelcomp_bench.quality.sink_window import SinkWindowMethod, evict_oldest, shift_keys
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from parallelcomp_llm.errors import InvalidConfigError, InvalidInputError
from parallelcomp_llm.kvcache import run_on_cache, tensors_of
from parallelcomp_llm.testing import (
    text_of_tokens,
    tiny_engine,
    tiny_model,
    tiny_model_folder,
    tiny_tokenizer,
)

WINDOW = 1024


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama (trained window 1024) with a chat-template tokenizer, saved as a folder."""
    path = tmp_path_factory.mktemp("tiny-llama")
    return tiny_model_folder(path, window=WINDOW, seed=1)


LONG_CONTEXT = tuple(
    name for name in METHOD_NAMES if not name.startswith("rag-") and name != "parallelcomp-heads"
)
"""The methods that read the whole context (the retrieval ones have tests of their own;
`parallelcomp-heads` reads the default model's head, in layer 17, which the tiny model lacks)."""


@pytest.fixture(scope="module")
def methods(model_dir):
    return {name: make_method(name, model_dir, device="cpu") for name in LONG_CONTEXT}


def make_item(context_tokens: int, max_new_tokens: int = 12, seed: int = 0) -> Item:
    return Item(
        suite="test",
        task="echo",
        length=context_tokens + max_new_tokens,
        seed=seed,
        index=0,
        context=text_of_tokens(context_tokens, seed=seed),
        question="What is written?",
        references=("abc",),
        match="any",
        max_new_tokens=max_new_tokens,
    )


def prompt_ids(method, item: Item) -> list[int]:
    return ItemPrompt.of(method.engine, item).token_ids


def arguments_seen(module: torch.nn.Module, name: str, call, *args) -> tuple[Any, list]:
    """`call(*args)`, and the keyword argument `name` of each forward pass of `module` meanwhile."""
    seen = []
    hook = module.register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append(kwargs[name]), with_kwargs=True
    )
    try:
        return call(*args), seen
    finally:
        hook.remove()


def rotary_outputs_seen(model, call, *args) -> tuple[Any, list[tuple[torch.Tensor, ...]]]:
    """`call(*args)`, and the (cos, sin) the first layer of `model` gets in each forward pass."""
    return arguments_seen(model.model.layers[0], "position_embeddings", call, *args)


def test_names_in_order_and_unknown_name_refused(model_dir):
    assert METHOD_NAMES == (
        "parallelcomp",
        "parallelcomp-noevict",
        "parallelcomp-merge",
        "parallelcomp-heads",
        "full",
        "truncate-middle",
        "rope-linear",
        "rope-ntk",
        "rope-yarn",
        "sink-window",
        "rag-bm25",
        "rag-bm25-window",
        "rag-bm25-1k",
        "rag-bm25-2k",
        "rag-bm25-4k",
        "rag-bm25-6k",
    )
    with pytest.raises(ValueError, match="unknown method 'h2o'.*sink-window"):
        make_method("h2o", model_dir, device="cpu")


def test_the_default_models_heads_are_refused_on_a_model_without_them(model_dir):
    with pytest.raises(InvalidConfigError, match="reads layer 17, outside the model's 2 layers"):
        make_method("parallelcomp-heads", model_dir, device="cpu")


def test_prompt_is_the_engines(methods):
    item = make_item(300)
    engine = methods["full"].engine
    assert engine.prompts.template.prefix.startswith("<|im_start|>user")
    assert prompt_ids(methods["full"], item) == (
        engine.prompts.prefix_ids
        + engine.prompts.encode(item.context)
        + engine.prompts.question_ids(item.question)
    )


def test_every_method_agrees_when_the_prompt_fits(methods):
    item = make_item(300)
    outputs, fed = {}, {}
    for name, method in methods.items():
        outputs[name], inputs = arguments_seen(
            method.engine.model, "input_ids", method.answer, item
        )
        fed[name] = torch.cat(inputs, dim=1)[0].tolist()
    expected = outputs["parallelcomp"].text
    assert expected
    assert {name: output.text for name, output in outputs.items()} == dict.fromkeys(
        LONG_CONTEXT, expected
    )
    prompt_tokens = len(prompt_ids(methods["full"], item))
    question_tokens = len(methods["full"].engine.prompts.question_ids(item.question))
    for name, output in outputs.items():
        assert output.prompt_tokens == prompt_tokens, name
        assert output.prefill_seconds > 0, name
        assert output.peak_memory_bytes > 0, name
    for name in ("parallelcomp", "parallelcomp-noevict", "parallelcomp-merge"):
        assert (outputs[name].chunks_kept, outputs[name].chunks_total) == (1, 1)
        assert outputs[name].kv_kept == prompt_tokens - question_tokens
    for name in LONG_CONTEXT[3:]:
        assert fed[name][:prompt_tokens] == prompt_ids(methods[name], item), name
        assert outputs[name].chunks_kept is outputs[name].chunks_total is None
        assert outputs[name].kv_kept == prompt_tokens, name


def test_truncate_middle_keeps_both_ends():
    assert truncate_middle(list(range(100)), 10) == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert truncate_middle(list(range(100)), 7) == [0, 1, 2, 96, 97, 98, 99]
    assert truncate_middle(list(range(5)), 10) == [0, 1, 2, 3, 4]


def test_truncated_prompt_fits_the_window(methods):
    item = make_item(1500, max_new_tokens=16)
    method = methods["truncate-middle"]
    whole = ItemPrompt.of(method.engine, item)
    fitted = whole.fitted(WINDOW - item.max_new_tokens)
    assert len(fitted.token_ids) == WINDOW - item.max_new_tokens
    assert fitted.prefix_ids == whole.prefix_ids and fitted.question_ids == whole.question_ids
    assert fitted.context_ids[0] == whole.context_ids[0]
    assert fitted.context_ids[-1] == whole.context_ids[-1]
    output = method.answer(item)
    assert output.prompt_tokens == output.kv_kept == WINDOW - item.max_new_tokens
    assert methods["full"].answer(item).prompt_tokens == len(whole.token_ids)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn"])
def test_rope_scaling_is_transformers_scaled_model(methods, model_dir, rope_type):
    name = {"linear": "rope-linear", "dynamic": "rope-ntk", "yarn": "rope-yarn"}[rope_type]
    method = methods[name]
    item = make_item(3000, max_new_tokens=10)
    token_ids = prompt_ids(method, item)
    factor = (len(token_ids) + item.max_new_tokens) / WINDOW
    assert factor > 2.5
    if rope_type == "dynamic":
        factor = 1.0
    config = AutoConfig.from_pretrained(model_dir)
    config.rope_parameters = {"rope_type": rope_type, "rope_theta": 10000.0, "factor": factor}
    if rope_type == "yarn":
        config.rope_parameters["original_max_position_embeddings"] = WINDOW
    scaled = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32)
    generate = partial(
        scaled.generate,
        max_new_tokens=item.max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(method.engine.eos_token_ids),
        pad_token_id=method.engine.tokenizer.pad_token_id,
    )
    generated, expected_rotary = rotary_outputs_seen(scaled, generate, torch.tensor([token_ids]))
    original = method.engine.model.model.rotary_emb
    output, rotary = rotary_outputs_seen(method.engine.model, method.answer, item)
    assert method.engine.model.model.rotary_emb is original
    expected_text = method.engine.tokenizer.decode(
        generated[0, len(token_ids) :], skip_special_tokens=True
    )
    assert output.text == expected_text
    assert len(rotary) == len(expected_rotary) > 1
    for (cos, sin), (expected_cos, expected_sin) in zip(rotary, expected_rotary, strict=True):
        assert torch.equal(cos, expected_cos) and torch.equal(sin, expected_sin)
    _, unscaled = rotary_outputs_seen(methods["full"].engine.model, methods["full"].answer, item)
    assert not torch.allclose(rotary[0][0], unscaled[0][0])


def test_dynamic_rope_answers_do_not_depend_on_earlier_items(methods):
    method = methods["rope-ntk"]
    item, longer = make_item(2000, max_new_tokens=10), make_item(3000, seed=1)
    _, first = rotary_outputs_seen(method.engine.model, method.answer, item)
    method.answer(longer)
    _, again = rotary_outputs_seen(method.engine.model, method.answer, item)
    assert torch.equal(first[0][0], again[0][0]) and torch.equal(first[-1][1], again[-1][1])


def test_rope_scaling_leaves_prompts_within_the_window_alone():
    model = tiny_model("llama", window=WINDOW)
    scaling = RopeScaling(model, "yarn")
    original = model.model.rotary_emb
    with scaling.scaled_for(WINDOW) as factor:
        assert factor is None and model.model.rotary_emb is original
    with scaling.scaled_for(3 * WINDOW) as factor:
        assert factor == 3.0 and model.model.rotary_emb.attention_scaling > 1
    assert model.model.rotary_emb is original
    with RopeScaling(model, "dynamic").scaled_for(3 * WINDOW) as factor:
        assert factor == 1.0 and model.model.rotary_emb is not original
    with pytest.raises(ValueError, match="rope_type"):
        RopeScaling(model, "longrope")


def keys_at(model, token_ids: list[int], start: int) -> tuple[list, list]:
    cache = DynamicCache()
    positions = torch.arange(start, start + len(token_ids))[None]
    with torch.inference_mode():
        run_on_cache(model, torch.tensor([token_ids]), positions, cache)
    return tensors_of(cache)


def test_shifted_keys_equal_keys_computed_at_the_shifted_positions():
    model = tiny_model("llama", window=WINDOW, seed=2)
    token_ids = tiny_tokenizer()(text_of_tokens(40))["input_ids"]
    shifted_keys, shifted_values = keys_at(model, token_ids, start=300)
    keys, values = keys_at(model, token_ids, start=0)
    for layer in range(len(keys)):
        moved = shift_keys(shifted_keys[layer], 300, model.model.rotary_emb)
        torch.testing.assert_close(moved, keys[layer], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(shifted_values[layer], values[layer], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rope_type", ["linear", "yarn"])
def test_shift_respects_scaled_rope(rope_type):
    model = tiny_model("llama", window=WINDOW)
    with RopeScaling(model, rope_type).scaled_for(4 * WINDOW):
        rotary = model.model.rotary_emb
        raw = torch.randn(1, 2, 5, 16)

        def encoded_at(position: int) -> torch.Tensor:
            cos, sin = rotary(raw, torch.full((1, 5), position))
            return apply_rotary_pos_emb(raw, raw, cos, sin)[1]

        torch.testing.assert_close(
            shift_keys(encoded_at(3000), 2500, rotary), encoded_at(500), atol=1e-4, rtol=1e-4
        )


def test_eviction_keeps_sinks_and_rerotates_the_window():
    model = tiny_model("llama", window=WINDOW, seed=3)
    token_ids = tiny_tokenizer()(text_of_tokens(60))["input_ids"]
    keys, values = keys_at(model, token_ids, start=0)
    cache = DynamicCache()
    with torch.inference_mode():
        run_on_cache(model, torch.tensor([token_ids]), torch.arange(60)[None], cache)
        evicted = evict_oldest(cache, sink_tokens=4, drop=20, rotary=model.model.rotary_emb)
    kept_keys, kept_values = tensors_of(evicted)
    assert evicted.get_seq_length() == 40
    for layer in range(len(keys)):
        assert torch.equal(kept_keys[layer][..., :4, :], keys[layer][..., :4, :])
        assert torch.equal(kept_values[layer][..., 4:, :], values[layer][..., 24:, :])
    # Layer 0 keys depend on the token and its position only.
    window_keys, _ = keys_at(model, token_ids[24:], start=4)
    torch.testing.assert_close(kept_keys[0][..., 4:, :], window_keys[0], atol=1e-4, rtol=1e-4)


def test_sink_window_bounds_the_cache():
    engine = tiny_engine("llama", window=WINDOW, seed=1)
    method = SinkWindowMethod("sink-window", engine, block_tokens=128)
    item = make_item(2000, max_new_tokens=16)
    prompt = ItemPrompt.of(engine, item)
    output, positions = arguments_seen(engine.model, "position_ids", method.answer, item)
    limit = method.cache_limit(prompt, item.max_new_tokens)
    assert output.prompt_tokens == len(prompt.token_ids)
    assert output.kv_kept == limit + len(prompt.question_ids)
    assert output.kv_kept + item.max_new_tokens <= WINDOW
    assert max(int(p.max()) for p in positions) < WINDOW
    assert output.text


@pytest.mark.parametrize("name", ["truncate-middle", "sink-window"])
def test_no_room_for_the_question_and_answer_is_refused(methods, name):
    with pytest.raises(InvalidInputError, match="max_new_tokens|do not fit"):
        methods[name].answer(make_item(100, max_new_tokens=WINDOW))


def test_memory_errors_free_the_item_and_restore_the_model(methods):
    retained = []

    def allocate_and_fail():
        activations = torch.ones(1024)
        retained.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("simulated")

    with (
        pytest.raises(torch.OutOfMemoryError) as failure,
        freeing_memory_on_failure(torch.device("cpu")),
    ):
        allocate_and_fail()
    assert failure.value.__traceback__ is not None
    assert retained[0]() is None

    method = methods["rope-yarn"]
    original = method.engine.model.model.rotary_emb

    def out_of_memory(module, args):
        raise torch.OutOfMemoryError("simulated")

    hook = method.engine.model.register_forward_pre_hook(out_of_memory)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            method.answer(make_item(1500))
    finally:
        hook.remove()
    assert method.engine.model.model.rotary_emb is original
