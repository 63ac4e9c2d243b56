"""Decoding over a prepared KV cache: token choice, stop strings, text deltas, and the events a
batch's callers read (deltas, then each row's `Answer` as soon as it has finished)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .answer import Answer
from .decode_settings import DecodeSettings
from .decode_step import DecodeStep, DynamicStep, StaticStep, StepGraphs, StepKind
from .device import device_work_done, model_device, model_devices
from .final_pass import FinalState
from .grammar import Grammars, TokenConstraint
from .scheduler import BatchControl
from .stats import StatsRecorder
from .tracing import StageTracer


class TokenSampler:
    """Greedy choice at temperature 0, otherwise sampling with temperature, top-p and top-k."""

    def __init__(self, settings: DecodeSettings, device: torch.device) -> None:
        self.greedy = settings.greedy
        self.warpers = LogitsProcessorList()
        if not self.greedy:
            self.warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k:
                self.warpers.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(settings.top_p))
        self.generator = torch.Generator(device=device)
        if settings.seed is not None:
            self.generator.manual_seed(settings.seed)
        else:
            self.generator.seed()

    def __call__(
        self, produced: list[int], logits: torch.Tensor, constraint: TokenConstraint | None
    ) -> int:
        """Next token from `logits` (vocab,) given the tokens produced so far, among those that
        `constraint` allows (when given)."""
        if constraint is not None:
            logits = constraint.masked(logits)
        if self.greedy:
            return int(logits.argmax())
        input_ids = torch.tensor([produced], dtype=torch.long, device=logits.device)
        scores = self.warpers(input_ids, logits.float()[None])
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


@dataclass
class DecodeRow:
    """One sequence of a decoding batch: its sampler, budget, next position, the token ids that
    end it, its grammar state (None: unconstrained), and its tokens so far.

    `finish` becomes 'stop' (an end token, a complete grammar value, or set by the caller when a
    stop string appears) or 'length'.
    """

    sampler: TokenSampler
    max_new_tokens: int
    next_position: int
    end_ids: frozenset[int]
    constraint: TokenConstraint | None = None
    produced: list[int] = field(default_factory=list)
    finish: str | None = None


@torch.inference_mode()
def decode_rows(
    step: DecodeStep,
    last_logits: torch.Tensor,
    rows: list[DecodeRow],
    pad_id: int,
    tracer: StageTracer | None = None,
) -> Iterator[list[int | None]]:
    """Decode every row of the batch in step; yield each step's new token per row (None for a
    finished row) until every row has finished. End tokens are not yielded.

    `last_logits` (rows, vocab) are the logits after each row's prompt; `step` runs the model
    for the next token of every row (a finished row is fed padding).
    """
    tracer = tracer or StageTracer()
    logits = last_logits
    while True:
        tokens: list[int | None] = []
        with tracer.span("sampling"):
            for index, row in enumerate(rows):
                token = None
                if row.finish is None:
                    token = row.sampler(row.produced, logits[index], row.constraint)
                    if token in row.end_ids:
                        row.finish, token = "stop", None
                    else:
                        row.produced.append(token)
                        if row.constraint is not None:
                            row.constraint.accept(token)
                        if row.constraint is not None and row.constraint.complete:
                            row.finish = "stop"
                        elif len(row.produced) == row.max_new_tokens:
                            row.finish = "length"
                tokens.append(token)
        if any(token is not None for token in tokens):
            yield tokens
        if all(row.finish is not None for row in rows):
            return
        fed = [pad_id if token is None else token for token in tokens]
        positions = [row.next_position + max(len(row.produced) - 1, 0) for row in rows]
        with tracer.span("decode_step"):
            logits = step(fed, positions)


class TextDeltas:
    """Turns a growing list of token ids into text deltas, holding back what may still change.

    A delta is held back while the text ends in an incomplete character or in a prefix of a stop
    string. When a stop string appears, the text before it is final and the stop text is dropped.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] | list[str]) -> None:
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


class Decoder:
    """Decodes a batch from its final pass and hands out each row's text and `Answer`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: frozenset[int],
        pad_id: int,
        tracer: StageTracer,
        step_kind: StepKind,
        grammars: Grammars,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.grammars = grammars
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.tracer = tracer
        self.step_kind = step_kind
        compiled = step_kind == "compiled"
        captured = step_kind == "cuda_graph" or (compiled and model_device(model).type == "cuda")
        self.graphs = StepGraphs(compiled) if captured else None

    def step(self, state: FinalState, max_new_tokens: int) -> DecodeStep:
        """How this batch decodes: over a static cache (captured as a CUDA graph, compiled) when
        the engine's `decode_step` says so and no calibration masks apply, else over the growing
        cache. The step takes the final pass's cache over."""
        cache, state.cache = state.cache, None
        if self.step_kind == "dynamic" or state.probe is not None:
            return DynamicStep(self.model, cache, state.attention_mask, state.probe)
        return StaticStep(
            self.model,
            cache,
            state.attention_mask,
            max_new_tokens,
            self.graphs,
            self.tracer,
            self.step_kind == "compiled",
        )

    def answers(
        self,
        state: FinalState,
        settings: list[DecodeSettings],
        recorders: list[StatsRecorder],
        control: BatchControl,
    ) -> Iterator[tuple[int, str | Answer]]:
        """Decode every row; yield (row, text delta) as text becomes final, and (row, Answer) as
        soon as the row has finished. A row that `control` no longer keeps stops decoding.
        `settings[row].max_new_tokens` must be resolved."""
        decoding_from = device_work_done(*model_devices(self.model))
        for recorder in recorders:
            recorder.decoding(decoding_from)
        device = state.logits.device
        rows, deltas = [], []
        for row_settings, position in zip(settings, state.next_positions, strict=True):
            sampler = TokenSampler(row_settings, device)
            constraint = self.grammars.constraint(row_settings.response_format)
            free_running = row_settings.ignore_eos and constraint is None
            end_ids = frozenset() if free_running else self.eos_ids
            rows.append(
                DecodeRow(sampler, row_settings.max_new_tokens, position, end_ids, constraint)
            )
            deltas.append(TextDeltas(self.tokenizer, row_settings.stop))
        step = self.step(state, max(row.max_new_tokens for row in rows))
        steps = decode_rows(step, state.logits, rows, self.pad_id, self.tracer)
        answered: set[int] = set()

        def finished() -> Iterator[tuple[int, str | Answer]]:
            for index, (row, row_deltas) in enumerate(zip(rows, deltas, strict=True)):
                if row.finish is None or index in answered:
                    continue
                answered.add(index)
                tail = row_deltas.flush()
                if tail:
                    yield index, tail
                stats = recorders[index].finished(len(row_deltas.token_ids))
                answer = Answer(
                    row_deltas.emitted,
                    row_deltas.token_ids,
                    row.finish,
                    stats,
                    settings[index].response_format,
                )
                yield index, answer

        for tokens in steps:
            for index, token in enumerate(tokens):
                if token is not None:
                    delta = deltas[index].push(token)
                    if delta:
                        yield index, delta
                    if deltas[index].stopped:
                        rows[index].finish = "stop"
                if rows[index].finish is None and not control.keep(index):
                    rows[index].finish = "stop"  # nobody waits for this row any more
            yield from finished()
        yield from finished()
