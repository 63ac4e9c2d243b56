"""Model shapes the speed benchmarks build with random weights, and their FLOP and byte counts."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from parallelcomp_llm.device import kv_bytes_per_token

MODELS = {
    # Meta-Llama-3-8B's shape.
    "llama3-8b-shape": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    # SmolLM2-135M-Instruct's shape (the engine's default model).
    "smollm2-shape": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    # CPU smoke test only.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=768,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
}


def parse_length(text: str) -> int:
    """Tokens from "128K" (times 1024) or a plain number."""
    text = text.strip().upper()
    if text.endswith("K"):
        return int(float(text[:-1]) * 1024)
    return int(text)


def build_model(name: str, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """The shape `name` with random weights, built directly on `device` in `dtype`."""
    config = LlamaConfig(**MODELS[name], bos_token_id=256, eos_token_id=258, pad_token_id=259)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def model_facts(model: LlamaForCausalLM) -> dict:
    """Sizes of the model that the FLOP and byte counts need."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    params = sum(p.numel() for p in model.parameters())
    embed = model.model.embed_tokens.weight.numel()
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    layer_linear = (
        config.hidden_size
        * head_dim
        * (config.num_attention_heads + 2 * config.num_key_value_heads)
        + config.num_attention_heads * head_dim * config.hidden_size
        + 3 * config.hidden_size * config.intermediate_size
    )
    # Bytes a decode step must read: every weight once, the input embedding only one row.
    decode_weight_bytes = (params - (0 if tied else embed)) * element
    return {
        "name_or_shape": config.model_type,
        "parameters": params,
        "parameter_bytes": params * element,
        "tied_embeddings": tied,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "intermediate": config.intermediate_size,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": head_dim,
        "vocab": config.vocab_size,
        "trained_window": config.max_position_embeddings,
        "rope_theta": (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
        or getattr(config, "rope_theta", None),
        "linear_params_per_layer": layer_linear,
        "kv_bytes_per_token": kv_bytes_per_token(model),
        "decode_weight_bytes": decode_weight_bytes,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def prefill_flops(facts: dict, row_tokens: list[int], logits_rows: int | None = None) -> float:
    """Useful FLOPs of a causal prefill of rows of these lengths (no padding), one logits row each."""
    linear = 2 * facts["layers"] * facts["linear_params_per_layer"]
    attention = 2 * 2 * facts["layers"] * facts["heads"] * facts["head_dim"]
    flops = 0.0
    for tokens in row_tokens:
        flops += linear * tokens + attention * tokens * (tokens + 1) / 2
    flops += (
        2
        * facts["hidden"]
        * facts["vocab"]
        * (logits_rows if logits_rows is not None else len(row_tokens))
    )
    return flops
