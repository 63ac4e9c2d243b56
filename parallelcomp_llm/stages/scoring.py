"""Chunk scorers: how relevant each chunk is to the question, higher is more relevant.

The question pass runs the question block after every chunk of a batch; a scorer reads what that
pass shows (`QuestionEvidence`) and returns one relevance per chunk. The best-scored chunks are
kept (`BudgetPolicy`), the others dropped.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import torch

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
class QuestionEvidence:
    """What one question pass over a batch of chunks shows.

    `logits` (rows, question tokens, vocab) are the model's predictions over the question block
    after each row; row `r` holds its chunk's context at `context[r]` (after the template
    prefix, before padding); `windows` maps an observation window asked for by a stage to the
    attention recorded for it (`window_attention`).
    """

    logits: torch.Tensor
    question_ids: list[int]
    context: list[slice]
    windows: dict[int, WindowAttention]

    def window_attention(self, window: int) -> WindowAttention:
        """The attention recorded for an observation window of `window` question tokens."""
        return self.windows[window]


class ChunkScorer(Stage):
    """Relevance of each chunk of a batch to the question (higher is more relevant)."""

    observation_window: ObservationWindow | None = None
    """Last question tokens whose attention the scorer reads (None: it reads only logits)."""

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
        device = evidence.logits.device
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
