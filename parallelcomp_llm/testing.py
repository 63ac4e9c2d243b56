"""Test helpers: tiny random-initialised models and a byte-level tokenizer built in code, the
runnable snippets of the READMEs, hooks that watch, hold or script the model's forward passes
(`ScriptedAnswer`, with a tool and an answer calling it to script), and the
pass-key haystack of `parallelcomp_llm.haystack` with the answer's convention (`first_integer`).

No download: the tokenizer maps every byte to a token (plus special tokens) and carries a
ChatML-style chat template, and the models are 2-layer Llama, Qwen2 or Mistral networks.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .haystack import (  # noqa: F401 - the tests' and benchmarks' names for them
    PASSKEY_NEEDLE,
    PASSKEY_NOISE,
    PASSKEY_QUESTION,
    PASSKEY_TASK,
    passkey_haystack,
)

ARCHITECTURES = ("llama", "qwen2", "mistral")
# Small reserves for the 512-token window, and chunks that fill the whole room, so that a test's
# text length sets its chunk count.
TINY_SETTINGS = {
    "question_reserve_tokens": 48,
    "answer_reserve_tokens": 32,
    "chunk_room_fraction": 1.0,
}
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: 256 byte tokens, then the special tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    for token in _SPECIAL:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template:
        tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def tiny_model(
    architecture: str = "llama",
    window: int = 512,
    seed: int = 0,
    vocab_size: int = 260,
    layers: int = 2,
) -> torch.nn.Module:
    """A random-initialised causal LM of `architecture` with a trained window of `window` tokens."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        bos_token_id=256,
        eos_token_id=258,
        pad_token_id=259,
        tie_word_embeddings=False,
    )
    builders = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }
    config_class, model_class = builders[architecture]
    torch.manual_seed(seed)
    model = model_class(config_class(**common))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5 if parameter.ndim > 1 else 0.02)
    return model.eval()


def tiny_model_folder(folder: Path, window: int = 512, seed: int = 0, layers: int = 2) -> Path:
    """`folder` holding a tiny Llama of `window` tokens and `layers` layers and the tiny
    tokenizer, saved as a model folder (for code that loads models by path)."""
    tiny_model("llama", window=window, seed=seed, layers=layers).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_engine(architecture: str = "llama", window: int = 512, seed: int = 0, **settings):
    """A `ParallelCompEngine` over a fresh tiny model; `settings` are `ParallelCompConfig` fields
    (small question and answer reserves unless given)."""
    from .config import ParallelCompConfig
    from .engine import ParallelCompEngine

    config = ParallelCompConfig(**(TINY_SETTINGS | settings))
    return ParallelCompEngine(
        tiny_model(architecture, window=window, seed=seed), tiny_tokenizer(), config
    )


def text_of_tokens(count: int, seed: int = 0) -> str:
    """Printable ASCII text of exactly `count` tokens of the tiny byte-level tokenizer."""
    letters = "abcdefghijklmnopqrstuvwxyz ,."
    return "".join(letters[(i * 7 + seed * 13 + i // 5) % len(letters)] for i in range(count))


def readme_snippet(readme: Path, name: str) -> str:
    """The python block that follows `<!-- snippet: NAME -->` in a Markdown file."""
    found = re.search(
        rf"<!-- snippet: {re.escape(name)} -->\s*```python\n(.*?)```",
        readme.read_text(encoding="utf-8"),
        re.DOTALL,
    )
    if found is None:
        raise LookupError(f"snippet {name!r} missing from {readme}")
    return found.group(1)


def count_prefills(model: torch.nn.Module, min_width: int = 100) -> list[int]:
    """Record the width of every forward pass wider than `min_width` tokens (chunk prefills, not
    question passes or decoding steps) in the returned list, which grows as the model runs."""
    widths: list[int] = []

    def record(module, args, kwargs):
        width = kwargs["input_ids"].shape[1]
        if width > min_width:
            widths.append(width)

    model.register_forward_pre_hook(record, with_kwargs=True)
    return widths


def forward_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Record (rows, tokens) of every forward pass from now on in the returned list: chunk
    prefills are wide, a decoding step is one token wide with a row per question of its batch."""
    shapes: list[tuple[int, int]] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    return shapes


UNREACHABLE_PYPI = {
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_FIND_LINKS": "",
    "PIP_RETRIES": "0",
    "PIP_DEFAULT_TIMEOUT": "2",
}
"""Environment under which pip sees a package index that refuses connections, and gives up at
once (for tests of download errors)."""


def first_integer(text: str) -> int | None:
    """The first run of digits in `text`, as an int (the pass-key answer convention)."""
    found = re.search(r"\d+", text)
    return int(found.group()) if found else None


class ModelPause:
    """Holds the first forward pass of `model` whose input ids `when` selects (default: the next
    one) until `release()`, so that the engine stays busy while a test queues other requests."""

    def __init__(
        self,
        model: torch.nn.Module,
        when: Callable[[torch.Tensor], bool] = lambda input_ids: True,
    ) -> None:
        self.reached = threading.Event()
        self._released = threading.Event()
        self._when = when
        self._handle = model.register_forward_pre_hook(self._hold, with_kwargs=True)

    def _hold(self, module, args, kwargs) -> None:
        if not self.reached.is_set() and self._when(kwargs["input_ids"]):
            self.reached.set()
            self._released.wait()

    def wait_until_reached(self, timeout: float = 60.0) -> None:
        """Block until a forward pass is held; `AssertionError` after `timeout` seconds."""
        assert self.reached.wait(timeout), "the model never reached the pause"

    def release(self) -> None:
        """Let the held pass go on; later passes are not held."""
        self._released.set()
        self._handle.remove()


CLOCK_TOOL = {"name": "get_time", "description": "The time now.", "parameters": {"type": "object"}}
"""A tool that takes no arguments."""
TEXT_THEN_CLOCK_CALL = 'Let me look.\n<tool_call>{"name": "get_time"}</tool_call>'
"""An answer that says something, then calls `CLOCK_TOOL` (for a `ScriptedAnswer`; 56 tokens of
the tiny tokenizer)."""


class ScriptedAnswer:
    """Makes `model` answer `text` (then its end-of-sequence token) to whatever it is asked,
    until `remove()` or the end of a `with` block: a forward hook sets the logits of each pass
    so that the next token is the script's, on from the start after any pass over more than one
    token (a prompt). The engine runs as ever (prompt, decoding, detokenizing, reading tool
    calls), over a chosen answer."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, text: str):
        self._ids = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
        self._said = 0
        self._handle = model.register_forward_hook(self._steer, with_kwargs=True)

    def _steer(self, module, args, kwargs, output):
        input_ids = kwargs["input_ids"]
        going_on = (
            input_ids.shape[-1] == 1
            and 0 < self._said < len(self._ids)
            and input_ids[0, -1].item() == self._ids[self._said - 1]
        )
        self._said = self._said + 1 if going_on else 1
        last = output.logits[:, -1]
        last.fill_(float("-inf"))
        last[:, self._ids[self._said - 1]] = 0.0
        return output

    def remove(self) -> None:
        """Let the model answer as itself again."""
        self._handle.remove()

    def __enter__(self) -> ScriptedAnswer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
