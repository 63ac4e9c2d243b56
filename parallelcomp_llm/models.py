"""Loading causal LMs for the engine: supported architectures, device and dtype, attention kernel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .attention import implementation_name, register_hooked_kernels
from .errors import InvalidConfigError, UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_supported(config) -> None:
    """Raise `UnsupportedModelError` unless `config` is of a supported architecture."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (decoder-only models with rotary positions)"
        )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidConfigError(f"device {device!r} asked for, but CUDA is not available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The transformers attention kernel to wrap: flash_attention_2 only where it can run."""
    flash_installed = importlib.util.find_spec("flash_attn") is not None
    if kernel == "auto":
        return "flash_attention_2" if flash_installed and device.type == "cuda" else "sdpa"
    if kernel == "flash_attention_2" and not (flash_installed and device.type == "cuda"):
        raise InvalidConfigError(
            "attn_implementation='flash_attention_2' needs CUDA and the flash-attn package "
            "(pip install 'parallelcomp-llm[flash]')"
        )
    return kernel


def use_hooked_attention(model: PreTrainedModel, kernel: str) -> None:
    """Switch `model` to the hooked version of transformers' `kernel` (see attention.py)."""
    register_hooked_kernels()
    model.set_attn_implementation(implementation_name(kernel))


def load_model_and_tokenizer(
    name_or_path: str | Path, device: torch.device, dtype: torch.dtype
) -> tuple[PreTrainedModel, object]:
    """Load a supported causal LM and its tokenizer, checking the architecture before the weights."""
    config = AutoConfig.from_pretrained(name_or_path)
    check_supported(config)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    return model.to(device).eval(), tokenizer
