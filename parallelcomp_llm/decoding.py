"""Token-by-token decoding over a prepared KV cache, with sampling, stop strings and text deltas."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import Cache

from .attention import AttentionProbe
from .kvcache import run_on_cache


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

    def __call__(self, produced: list[int], logits: torch.Tensor) -> int:
        """Next token from `logits` (vocab,) given the tokens produced so far."""
        if self.greedy:
            return int(logits.argmax())
        input_ids = torch.tensor([produced], dtype=torch.long, device=logits.device)
        scores = self.warpers(input_ids, logits.float()[None])
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


@dataclass
class DecodeRow:
    """One sequence of a decoding batch: its sampler, budget, next position and tokens so far.

    `finish` becomes 'stop' (EOS, or set by the caller when a stop string appears) or 'length'.
    """

    sampler: TokenSampler
    max_new_tokens: int
    next_position: int
    produced: list[int] = field(default_factory=list)
    finish: str | None = None


@torch.inference_mode()
def decode_rows(
    model: PreTrainedModel,
    cache: Cache,
    last_logits: torch.Tensor,
    rows: list[DecodeRow],
    eos_ids: set[int],
    pad_id: int,
    attention_mask: torch.Tensor | None = None,
    probe: AttentionProbe | None = None,
) -> Iterator[list[int | None]]:
    """Decode every row of the batch in step; yield each step's new token per row (None for a
    finished row) until every row has finished. EOS is not yielded.

    `last_logits` (rows, vocab) are the logits after each row's prompt. `attention_mask`
    (rows, cache width) marks padding in the cache, if any; every new token is attended. Each step
    runs under `probe`, which keeps applying the request's calibration masks.
    """
    device = last_logits.device
    logits = last_logits
    while True:
        tokens: list[int | None] = []
        for index, row in enumerate(rows):
            token = None
            if row.finish is None:
                token = row.sampler(row.produced, logits[index])
                if token in eos_ids:
                    row.finish, token = "stop", None
                else:
                    row.produced.append(token)
                    if len(row.produced) == row.max_new_tokens:
                        row.finish = "length"
            tokens.append(token)
        if any(token is not None for token in tokens):
            yield tokens
        if all(row.finish is not None for row in rows):
            return
        input_ids = [[pad_id if token is None else token] for token in tokens]
        positions = [[row.next_position + max(len(row.produced) - 1, 0)] for row in rows]
        if attention_mask is not None:
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1
            )
        logits = run_on_cache(
            model,
            torch.tensor(input_ids, device=device),
            torch.tensor(positions, device=device),
            cache,
            attention_mask,
            probe,
        )[:, -1]


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
