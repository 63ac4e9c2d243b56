"""Query-aware eviction: rank chunks by relevance, keep a budget of KV entries inside each.

Chunk relevance is the question's mean negative log-likelihood given the chunk (lower is more
relevant) or the attention mass of the question's last tokens on the chunk. Token scores are the
SnapKV statistic recorded by the attention probe, max-pooled so that neighbours survive together;
every layer and KV head keeps its own top entries, in their original order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def question_nll(logits: torch.Tensor, question_ids: list[int]) -> torch.Tensor:
    """Mean NLL per row of question tokens 1..q-1 given the row and the tokens before them."""
    targets = torch.tensor(question_ids[1:], device=logits.device)
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, targets[None, :, None].expand(logits.shape[0], -1, 1))
    return -picked.squeeze(-1).mean(dim=1)


def attention_mass(
    window_scores: dict[int, torch.Tensor], window: int, starts: list[int], ends: list[int]
) -> torch.Tensor:
    """Share of the window queries' attention that falls on `[start, end)` of each row, averaged
    over window queries, layers and KV heads (0 to 1)."""
    rows = []
    for row, (start, end) in enumerate(zip(starts, ends)):
        per_layer = [
            scores[row, :, start:end].sum(dim=-1).mean() for scores in window_scores.values()
        ]
        rows.append(torch.stack(per_layer).mean() / window)
    return torch.stack(rows)


def pooled_scores(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Max-pool token scores (heads, tokens) along tokens with an odd `kernel`, same length."""
    if kernel <= 1:
        return scores
    return F.max_pool1d(scores[None], kernel_size=kernel, stride=1, padding=kernel // 2)[0]


def top_entries(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices (heads, budget) of each head's `budget` highest scores, in ascending order."""
    budget = min(budget, scores.shape[-1])
    return scores.topk(budget, dim=-1).indices.sort(dim=-1).values


def gather_entries(states: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Pick entries `indices` (heads, n) from `states` (heads, tokens, dim)."""
    return states.gather(1, indices[..., None].expand(-1, -1, states.shape[-1]))


def chunks_to_keep(scores: list[float], count: int, lower_is_better: bool) -> list[int]:
    """Indices of the `count` best chunks, in their original order."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=not lower_is_better)
    return sorted(order[:count])
