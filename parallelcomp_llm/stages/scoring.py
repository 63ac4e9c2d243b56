"""Chunk scorers: how relevant each chunk is to the question, higher is more relevant.

The question pass runs the question block after every chunk of a batch; a scorer reads what that
pass shows (`QuestionEvidence`) and returns one relevance per chunk. A scorer marked
`question_alone` reads instead the queries of the question read once alone (`QuestionQueries`)
and the batch's keys, so that no question pass runs for it. A scorer that reads only the first
layers (`layers_read`) lets the question pass, and the chunk prefill when no chunk's KV is kept,
stop after them. The best-scored chunks are kept (`BudgetPolicy`), the others dropped.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Self

import torch
from pydantic import Field, NonNegativeInt

from ..errors import InvalidConfigError
from .base import Registry, Stage
from .selection import OBSERVATION_WINDOW, ObservationWindow

if TYPE_CHECKING:
    from ..config import ParallelCompConfig


@dataclass(frozen=True)
class WindowAttention:
    """Attention of the question's last `queries` tokens, summed over them and averaged over the
    query heads of each KV group: per layer, (rows, kv_heads, keys)."""

    scores: dict[int, torch.Tensor]
    queries: int


@dataclass(frozen=True)
class QuestionQueries:
    """The queries of the question's last tokens, read once alone after the template prefix
    (after the rotary embedding, at the positions right after the longest chunk): per layer
    (1, heads, tokens, head_dim), with the attention kernel's softmax `scaling`."""

    by_layer: dict[int, torch.Tensor]
    scaling: float


@dataclass(frozen=True)
class QuestionEvidence:
    """What the question shows over a batch of chunks.

    `logits` (rows, question tokens, vocab) are the model's predictions over the question block
    after each row (None when no question pass ran: the scorer reads the question alone and no
    KV is evicted); row `r` holds its chunk's context at `context[r]` (after the template prefix,
    before padding); `windows` maps an observation window asked for by a stage to the attention
    recorded for it (`window_attention`); `keys` are the batch's keys, per layer (rows,
    kv_heads, width, head_dim), and `queries` the question's own, for a `question_alone` scorer.
    """

    logits: torch.Tensor | None
    question_ids: list[int]
    context: list[slice]
    windows: dict[int, WindowAttention]
    keys: list[torch.Tensor]
    queries: QuestionQueries | None = None

    def window_attention(self, window: int) -> WindowAttention:
        """The attention recorded for an observation window of `window` question tokens."""
        return self.windows[window]

    def context_mask(self, keys: int) -> torch.Tensor:
        """(rows, keys) booleans, True at each row's chunk context among `keys` key positions."""
        mask = torch.zeros(len(self.context), keys, dtype=torch.bool)
        for row, span in enumerate(self.context):
            mask[row, span] = True
        return mask


class ChunkScorer(Stage):
    """Relevance of each chunk of a batch to the question (higher is more relevant)."""

    observation_window: ObservationWindow | None = None
    """Last question tokens whose attention the scorer reads (None: it reads only logits), or,
    `question_alone`, whose queries it reads (None: every question token's)."""
    question_alone: ClassVar[bool] = False
    """Whether the scorer reads the queries of the question read once alone (`QuestionQueries`)
    instead of a question pass after every chunk."""

    @property
    def layers_read(self) -> int | None:
        """How many decoder layers, from the first, the scorer reads the attention of (None: the
        whole model, logits included): the question pass stops after them."""
        return None

    @property
    def layers_observed(self) -> frozenset[int] | None:
        """The layers whose attention the scorer reads from its observation window (None: every
        layer's); the others' is not recorded when no KV selector reads it."""
        return None

    def check_fits(self, layers: int, kv_heads: int) -> None:
        """`InvalidConfigError` unless a model of `layers` layers and `kv_heads` KV heads has
        what the scorer reads."""
        if self.layers_read is not None and self.layers_read > layers:
            raise InvalidConfigError(
                f"chunk scorer {self.name or type(self).__name__!r} reads layer "
                f"{self.layers_read - 1}, outside the model's {layers} layers (counted from 0)"
            )

    @abstractmethod
    def score(self, evidence: QuestionEvidence) -> torch.Tensor:
        """One relevance per row of the batch, as a float tensor (rows,)."""

    def shares(self, relevance: list[float], question_tokens: int) -> list[float]:
        """The relevance of all the context's chunks as probability-like shares (0 to 1, summing
        to 1), the attribution callers read: by default a softmax."""
        return torch.softmax(torch.tensor(relevance, dtype=torch.float64), dim=0).tolist()


SCORERS: Registry[ChunkScorer] = Registry("chunk scorer", ChunkScorer)


@SCORERS.register("nll")
class NllScorer(ChunkScorer):
    """The question's likelihood given the chunk: minus the mean negative log-likelihood of the
    question tokens after the first (the paper's score, read from the question pass's logits)."""

    def score(self, evidence: QuestionEvidence) -> torch.Tensor:
        logits = evidence.logits
        targets = torch.tensor(evidence.question_ids[1:], device=logits.device)
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = log_probs.gather(-1, targets[None, :, None].expand(logits.shape[0], -1, 1))
        return picked.squeeze(-1).mean(dim=1)

    def shares(self, relevance: list[float], question_tokens: int) -> list[float]:
        """Each chunk's probability of being the one the question comes from, with every chunk
        equally likely before: the softmax of the question's whole log-likelihood."""
        scored = max(1, question_tokens - 1)
        return super().shares([value * scored for value in relevance], question_tokens)


@SCORERS.register("attention")
class AttentionMassScorer(ChunkScorer):
    """The share of the last question tokens' attention that falls on the chunk's context,
    averaged over those tokens, the layers and the KV heads (0 to 1). Each layer's scores are on
    its layer's device (several, for a model sharded by a device map)."""

    observation_window: ObservationWindow = OBSERVATION_WINDOW

    @classmethod
    def from_config(cls, config: ParallelCompConfig) -> Self:
        return cls(observation_window=config.observation_window)

    def score(self, evidence: QuestionEvidence) -> torch.Tensor:
        attention = evidence.window_attention(self.observation_window)
        device = evidence.keys[0].device
        rows = []
        for row, context in enumerate(evidence.context):
            per_layer = [
                scores[row, :, context].sum(dim=-1).mean().to(device)
                for scores in attention.scores.values()
            ]
            rows.append(torch.stack(per_layer).mean() / attention.queries)
        return torch.stack(rows)

    def shares(self, relevance: list[float], question_tokens: int) -> list[float]:
        """Each chunk's share of the attention mass that falls on the context."""
        total = sum(relevance)
        if total <= 0:
            return [1.0 / len(relevance)] * len(relevance)
        return [value / total for value in relevance]


@SCORERS.register("key_match")
class KeyMatchScorer(ChunkScorer):
    """How strongly the queries of the question's last tokens, the question read once alone,
    match the keys of the chunk's context: the log-sum-exp of their attention logits over those
    keys (the log of the attention the chunk would draw beside the others), averaged over the
    tokens, the query heads and the layers. No question pass runs after the chunks, so a
    question costs about as much over any number of chunks (the paper scores by `nll`)."""

    observation_window: ObservationWindow = OBSERVATION_WINDOW
    question_alone: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: ParallelCompConfig) -> Self:
        return cls(observation_window=config.observation_window)

    def score(self, evidence: QuestionEvidence) -> torch.Tensor:
        queries, device = evidence.queries, evidence.keys[0].device
        outside = ~evidence.context_mask(int(evidence.keys[0].shape[2]))[:, None, None, None, :]
        per_layer = []
        for layer, keys in enumerate(evidence.keys):
            query = queries.by_layer[layer][0].to(keys.device).float()
            heads, tokens, dim = query.shape
            grouped = query.view(int(keys.shape[1]), heads // int(keys.shape[1]), tokens, dim)
            logits = torch.einsum("hgqd,rhkd->rhgqk", grouped, keys.float()) * queries.scaling
            logits = logits.masked_fill(outside.to(keys.device), float("-inf"))
            per_layer.append(torch.logsumexp(logits, dim=-1).mean(dim=(1, 2, 3)).to(device))
        return torch.stack(per_layer).mean(dim=0)


Head = Annotated[tuple[NonNegativeInt, NonNegativeInt], Field(description="(layer, KV head)")]
WHOLE_QUESTION = 1024
"""The observation window of `RetrievalHeadScorer`: the whole question block of most questions."""


@SCORERS.register("heads")
class RetrievalHeadScorer(ChunkScorer):
    """The attention the question draws to the chunk's context in chosen KV heads, retrieval
    heads of the model: the mean over `heads` (layer, KV head) of the log of that attention's
    mass (summed over the question's last `observation_window` tokens, averaged over the query
    heads of the group). The question pass stops after the deepest listed layer, and so does
    the chunk prefill when no chunk's KV is kept; which heads retrieve is the model's own
    (`parallelcomp_bench.quality.scoring_probe` ranks them)."""

    heads: tuple[Head, ...] = Field(min_length=1)
    observation_window: ObservationWindow = WHOLE_QUESTION

    @classmethod
    def from_config(cls, config: ParallelCompConfig) -> Self:
        return cls(heads=tuple(config.scoring_heads or ()))

    @property
    def layers_read(self) -> int:
        return max(layer for layer, _ in self.heads) + 1

    @property
    def layers_observed(self) -> frozenset[int]:
        return frozenset(layer for layer, _ in self.heads)

    def check_fits(self, layers: int, kv_heads: int) -> None:
        super().check_fits(layers, kv_heads)
        for layer, head in self.heads:
            if head >= kv_heads:
                raise InvalidConfigError(
                    f"scoring head ({layer}, {head}) names KV head {head}, outside the model's "
                    f"{kv_heads} KV heads (counted from 0)"
                )

    def score(self, evidence: QuestionEvidence) -> torch.Tensor:
        attention = evidence.window_attention(self.observation_window)
        device = evidence.keys[0].device
        context = evidence.context_mask(int(attention.scores[self.heads[0][0]].shape[-1]))
        logs = []
        for layer, head in self.heads:
            scores = attention.scores[layer][:, head].float()
            mass = scores.masked_fill(~context.to(scores.device), 0.0).sum(dim=-1)
            logs.append(mass.clamp_min(1e-12).log().to(device))
        return torch.stack(logs).mean(dim=0)
