"""Loading causal LMs for the engine: supported architectures, device (or device map) and dtype,
attention kernel, the special tokens that pad and end answers, and what a calibrator needs of the
model."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .attention import implementation_name, register_hooked_kernels
from .errors import InvalidConfigError, InvalidInputError, ModelDownloadError, UnsupportedModelError
from .loading import LoadOptions
from .stages.calibration import Calibrator
from .stages.scoring import ChunkScorer

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


def resolve_placement(device: str, options: LoadOptions) -> torch.device:
    """The device the model is loaded onto (the `device` setting), or, when `options` has a
    device map, the main device the map uses (the one the dtype is chosen for). A map that names
    CUDA without it, and an explicit `device` other than the one device a map names, are
    refused."""
    if not options.places_model:
        return resolve_device(device)
    named = options.mapped_devices()
    if device != "auto" and named != [device]:
        raise InvalidConfigError(
            f"device={device!r} conflicts with device_map={options.device_map!r}: the device "
            "map places the model, so leave device as 'auto'"
        )
    cuda = [name for name in named if name.startswith("cuda")]
    if cuda and not torch.cuda.is_available():
        raise InvalidConfigError(f"device_map names {cuda[0]!r}, but CUDA is not available")
    if named and not cuda:
        return torch.device(named[0])
    return resolve_device("auto")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def resolve_kernel(kernel: str, devices: Sequence[torch.device]) -> str:
    """The transformers attention kernel to wrap: flash_attention_2 only where it can run (every
    one of the model's `devices` a CUDA device)."""
    flash_runs = importlib.util.find_spec("flash_attn") is not None and all(
        device.type == "cuda" for device in devices
    )
    if kernel == "auto":
        return "flash_attention_2" if flash_runs else "sdpa"
    if kernel == "flash_attention_2" and not flash_runs:
        raise InvalidConfigError(
            "attn_implementation='flash_attention_2' needs CUDA and the flash-attn package "
            "(pip install 'parallelcomp-llm[flash]')"
        )
    return kernel


def use_hooked_attention(model: PreTrainedModel, kernel: str) -> None:
    """Switch `model` to the hooked version of transformers' `kernel` (see attention.py)."""
    register_hooked_kernels()
    model.set_attn_implementation(implementation_name(kernel))


@contextmanager
def checked_between_layers(model: PreTrainedModel, check: Callable[[], None]) -> Iterator[None]:
    """Call `check` before each decoder layer runs inside the `with` block, so that a deadline or
    a cancellation stops a long forward pass between two layers rather than after it."""
    handles = [
        layer.register_forward_pre_hook(lambda module, args: check())
        for layer in model.get_decoder().layers
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _loading_errors(name_or_path: str | Path) -> Iterator[None]:
    """Refuse a local path that does not exist, then turn transformers' failures to load
    `name_or_path` into one-line errors: `InvalidInputError` for a local path (a name that exists
    on disk, or that cannot be a Hub name), `ModelDownloadError` for a Hugging Face Hub name."""
    text = str(name_or_path)
    exists = Path(text).exists()
    local = exists or isinstance(name_or_path, Path) or _path_form(text)
    if local and not exists:
        raise InvalidInputError(f"model path {text!r} does not exist")
    try:
        yield
    except ImportError as error:
        reason = " ".join(str(error).split())
        raise InvalidConfigError(f"cannot load {text!r} as asked: {reason}") from error
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())
        if local:
            raise InvalidInputError(f"cannot load a model from {text!r}: {reason}") from error
        raise ModelDownloadError(
            f"cannot load model {text!r} from the Hugging Face Hub: {reason}"
        ) from error


def _path_form(text: str) -> bool:
    """Whether `text` is written as a path: Hub names are `name` or `owner/name`."""
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or Hub name (errors as `_loading_errors` says)."""
    with _loading_errors(name_or_path):
        return AutoTokenizer.from_pretrained(name_or_path)


def load_model_and_tokenizer(
    name_or_path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    options: LoadOptions | None = None,
) -> tuple[PreTrainedModel, object]:
    """Load a supported causal LM and its tokenizer, checking the architecture before the weights
    (errors as `_loading_errors` says), with the loading `options`; the model goes to `device`
    unless transformers places it (a device map, or quantized weights)."""
    options = options or LoadOptions()
    hub, weights = options.hub_keywords(), options.model_keywords(device)
    with _loading_errors(name_or_path):
        config = AutoConfig.from_pretrained(name_or_path, **hub)
        check_supported(config)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **weights)
    if "device_map" not in weights:
        model = model.to(device)
    return model.eval(), tokenizer


def check_calibrator(calibrator: Calibrator | None, config, kernel: str, kept_chunks: str) -> None:
    """Refuse a calibrator the model cannot run: it needs the SDPA kernel and existing layers,
    and merged KV to correct (not `kept_chunks="reread"`)."""
    if calibrator is None:
        return
    if kept_chunks == "reread":
        raise InvalidConfigError(
            "calibration corrects merged KV and kept_chunks='reread' reads the kept chunks "
            "again instead: set kept_chunks='merge' to calibrate, or switch calibration off"
        )
    if kernel != "sdpa":
        raise InvalidConfigError("attention-bias calibration needs attn_implementation='sdpa'")
    layers = config.num_hidden_layers
    if calibrator.layers[1] >= layers:
        raise InvalidConfigError(
            f"calibration_layers {calibrator.layers} outside the model's {layers} layers"
        )


def check_scorer(scorer: ChunkScorer, config) -> None:
    """Refuse a scorer that reads layers or KV heads the model does not have."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    scorer.check_fits(config.num_hidden_layers, kv_heads)


def end_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Token ids that end an answer: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for source in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(t) for t in source)
    return frozenset(ids)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token id rows are padded with: the tokenizer's pad token, else its EOS, else 0."""
    candidates = (tokenizer.pad_token_id, tokenizer.eos_token_id)
    return next((token for token in candidates if token is not None), 0)
