"""Token-by-token decoding over a prepared KV cache, with sampling, stop strings and text deltas."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import Cache

from .attention import AttentionProbe, active_probe


class TokenSampler:
    """Greedy choice at temperature 0, otherwise sampling with temperature, top-p and top-k."""

    def __init__(
        self,
        temperature: float,
        top_p: float,
        top_k: int | None,
        seed: int | None,
        device: torch.device,
    ) -> None:
        self.greedy = temperature == 0.0
        self.warpers = LogitsProcessorList()
        if not self.greedy:
            self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_k:
                self.warpers.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = torch.Generator(device=device)
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> int:
        """Next token from `logits` (vocab,) given the tokens so far `input_ids` (1, n)."""
        if self.greedy:
            return int(logits.argmax())
        scores = self.warpers(input_ids, logits.float()[None])
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


@torch.inference_mode()
def decode_tokens(
    model: PreTrainedModel,
    cache: Cache,
    last_logits: torch.Tensor,
    next_position: int,
    sampler: TokenSampler,
    eos_ids: set[int],
    max_new_tokens: int,
    probe: AttentionProbe | None = None,
) -> Iterator[int]:
    """Yield new token ids until EOS (not yielded) or `max_new_tokens`.

    `last_logits` (vocab,) are the logits after the prompt; `next_position` is the position id of
    the first new token. Each step feeds the chosen token back with the cache, under `probe`
    (which keeps applying the calibration masks of the request).
    """
    device = last_logits.device
    produced: list[int] = []
    logits = last_logits
    for step in range(max_new_tokens):
        history = torch.tensor([produced], dtype=torch.long, device=device)
        token = sampler(history, logits)
        if token in eos_ids:
            return
        produced.append(token)
        yield token
        if step + 1 == max_new_tokens:
            return
        with active_probe(probe):
            output = model(
                input_ids=torch.tensor([[token]], device=device),
                position_ids=torch.tensor([[next_position + step]], device=device),
                past_key_values=cache,
                use_cache=True,
            )
        logits = output.logits[0, -1]


class TextDeltas:
    """Turns a growing list of token ids into text deltas, holding back what may still change.

    A delta is held back while the text ends in an incomplete character or in a prefix of a stop
    string. When a stop string appears, the text before it is final and the stop text is dropped.
    """

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def _text(self) -> str:
        return self.tokenizer.decode(self.token_ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now final."""
        self.token_ids.append(token_id)
        text = self._text()
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._advance(text[:cut])
        safe = len(text)
        if text.endswith("\ufffd"):
            safe = len(text.rstrip("\ufffd"))
        for stop in self.stop:
            for size in range(min(len(stop) - 1, safe), 0, -1):
                if text[:safe].endswith(stop[:size]):
                    safe -= size
                    break
        return self._advance(text[:safe])

    def flush(self) -> str:
        """Text still held back at the end of generation."""
        return "" if self.stopped else self._advance(self._text())

    def _advance(self, final: str) -> str:
        if not final.startswith(self.emitted) or len(final) <= len(self.emitted):
            return ""
        delta = final[len(self.emitted) :]
        self.emitted = final
        return delta
