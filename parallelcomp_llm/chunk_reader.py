"""The per-batch work of the method: after a batch of chunks is prefilled, each question reads it.

For every question, `ChunkReader.read` runs the question pass over the batch (the question after
every chunk; for a scorer that reads the question alone, that question's queries once a request
instead, unless KV is evicted; for a scorer that reads only the first layers, through those
layers), has the scorer rate each chunk and the selector pick the KV
entries each chunk keeps within the budget, and adds the result to that question's `Selection`.
The pipeline calls it over every batch of a context; a prefill worker
(`parallelcomp_llm.distributed`) calls it over its share of the batches, and the pipeline then
adds the workers' selections into one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch
from transformers import PreTrainedModel

from .attention import AttentionProbe
from .device import Placement
from .merging import StoredChunk, store_chunk
from .prefill import EncodedBatch, question_alone, question_pass
from .requests import Encoding
from .stages import (
    BudgetSplit,
    ChunkEntries,
    QuestionEvidence,
    QuestionQueries,
    Stages,
    WindowAttention,
)
from .stages.contract import checked_picks, checked_relevance
from .tracing import StageTracer


def most_relevant(relevance: Mapping[int, float], keep: int) -> list[int]:
    """The indices of the `keep` most relevant chunks (`relevance` by chunk index), in context
    order (ties: the earlier)."""
    order = sorted(sorted(relevance), key=relevance.__getitem__, reverse=True)
    return sorted(order[:keep])


@dataclass
class Selection:
    """One question's reading of the context, batch after batch: each chunk's relevance by chunk
    index (scored whenever there is more than one chunk, for attribution) and, by chunk index, the
    KV after KV eviction of the chunks it may still keep (when `store`: the question may merge
    them), and the queries of the question read alone, once read (for a `question_alone`
    scorer; not carried by `to`)."""

    score: bool
    rank: bool
    evict: bool
    store: bool
    relevance: dict[int, float] = field(default_factory=dict)
    stored: dict[int, StoredChunk] = field(default_factory=dict)
    queries: QuestionQueries | None = None

    def add(
        self, relevance: Mapping[int, float], stored: Mapping[int, StoredChunk], keep: int
    ) -> None:
        """Take some chunks' relevance and stored KV (a batch's, or a prefill worker's); when
        chunks are ranked, hold on only to the `keep` most relevant so far (the chunks kept at the
        end are among them), so that memory holds at most `keep` chunks and one batch."""
        self.relevance |= relevance
        self.stored |= stored
        if self.rank:
            best = set(most_relevant(self.relevance, keep))
            self.stored = {index: chunk for index, chunk in self.stored.items() if index in best}

    def in_order(self, chunks: int) -> list[float]:
        """The relevance of chunks 0 to `chunks - 1`, in context order."""
        return [self.relevance[index] for index in range(chunks)]

    def to(self, devices: Placement) -> Selection:
        """This selection with its stored KV on `devices` (one per layer, or one for all)."""
        stored = {index: chunk.to(devices) for index, chunk in self.stored.items()}
        return replace(self, relevance=dict(self.relevance), stored=stored, queries=None)

    @classmethod
    def under(cls, split: BudgetSplit, encoding: Encoding, store: bool) -> Selection:
        """What the budget asks of the context: rank its chunks when not all are kept, evict KV
        when a chunk is longer than its share and its KV is stored."""
        chunks, budget = encoding.chunks, split.entries_per_chunk
        long_chunk = budget is not None and any(len(chunk) > budget for chunk in chunks)
        rank = split.keep_chunks < len(chunks)
        return cls(score=len(chunks) > 1, rank=rank, evict=store and long_chunk, store=store)


class ChunkReader:
    """Reads encoded batches of chunks for questions, with one model and one set of stages."""

    def __init__(
        self, model: PreTrainedModel, stages: Stages, tracer: StageTracer, pad_id: int
    ) -> None:
        self.model = model
        self.stages = stages
        self.tracer = tracer
        self.pad_id = pad_id

    def read(
        self,
        batch: EncodedBatch,
        encoding: Encoding,
        questions: list[list[int]],
        selections: list[Selection],
        split: BudgetSplit,
    ) -> None:
        """Every question (its question block's token ids) over `batch`: its chunks' relevance and
        their stored KV added to the question's selection."""
        for question_ids, selection in zip(questions, selections, strict=True):
            evidence = self.question_pass(batch, encoding, question_ids, selection)
            relevance = {}
            if selection.score:
                relevance = dict(zip(batch.chunk_indices, self.score(evidence), strict=True))
            stored = {}
            if selection.store:
                stored = self.select_kv(batch, encoding, evidence, split)
            selection.add(relevance, stored, split.keep_chunks)
            del evidence  # its logits: one question's at a time

    def question_pass(
        self,
        batch: EncodedBatch,
        encoding: Encoding,
        question_ids: list[int],
        selection: Selection,
    ) -> QuestionEvidence | None:
        """The question after every chunk of `batch`, recording the attention the scorer and
        the selector read (no pass when only a `question_alone` scorer reads: its queries are
        read once, into `selection`); None when nothing is scored or evicted."""
        if not (selection.score or selection.evict):
            return None
        scorer, selector = self.stages.scorer, self.stages.selector
        alone = selection.score and scorer.question_alone
        if alone and selection.queries is None:
            selection.queries = self.question_queries(encoding, question_ids)
        asked = [scorer.observation_window if selection.score and not alone else None]
        asked.append(selector.observation_window if selection.evict else None)
        windows = {window: min(window, len(question_ids)) for window in asked if window}
        observed = None if selection.evict else scorer.layers_observed
        logits, probe = None, AttentionProbe(windows=windows.values(), window_layers=observed)
        layers = None if selection.evict else scorer.layers_read
        if selection.evict or not alone:
            with self.tracer.span("question_pass"):
                logits = question_pass(self.model, batch, question_ids, probe, self.pad_id, layers)
        return QuestionEvidence(
            logits,
            question_ids,
            [slice(len(encoding.prefix_ids), length) for length in batch.lengths],
            {
                window: WindowAttention(probe.window_scores[queries], queries)
                for window, queries in windows.items()
            },
            batch.keys,
            selection.queries,
        )

    def question_queries(self, encoding: Encoding, question_ids: list[int]) -> QuestionQueries:
        """The queries of the question's last tokens (the scorer's observation window), the
        question read alone after the template prefix, at the positions after the longest
        chunk."""
        window = self.stages.scorer.observation_window or len(question_ids)
        probe = AttentionProbe(query_window=min(window, len(question_ids)))
        prefix = encoding.prefix_ids
        start = len(prefix) + max(len(chunk) for chunk in encoding.chunks)
        with self.tracer.span("question_pass"):
            question_alone(self.model, prefix, question_ids, start, probe)
        return QuestionQueries(probe.queries, probe.scaling)

    def score(self, evidence: QuestionEvidence) -> list[float]:
        """Each chunk's relevance to the question, by the scorer."""
        scorer = self.stages.scorer
        with self.tracer.span("chunk_scoring"):
            relevance = scorer.score(evidence)
        return checked_relevance(scorer, relevance, len(evidence.context))

    def select_kv(
        self,
        batch: EncodedBatch,
        encoding: Encoding,
        evidence: QuestionEvidence | None,
        split: BudgetSplit,
    ) -> dict[int, StoredChunk]:
        """Every chunk of `batch`, by index, copied out with the KV entries the selector keeps
        within the budget (all entries of a chunk within it) and its prefix."""
        selector, budget = self.stages.selector, split.entries_per_chunk
        window, prefix = selector.observation_window, len(encoding.prefix_ids)
        stored = {}
        with self.tracer.span("kv_selection"):
            for row, index in enumerate(batch.chunk_indices):
                length = len(encoding.chunks[index])
                context = slice(prefix, prefix + length)
                picks = None
                if evidence is not None and budget is not None and length > budget:
                    attention = evidence.window_attention(window).scores if window else None
                    picks = [
                        self._picked(
                            ChunkEntries(
                                layer,
                                batch.keys[layer][row, :, context],
                                batch.values[layer][row, :, context],
                                attention[layer][row, :, context] if attention else None,
                            ),
                            budget,
                        )
                        for layer in range(len(batch.keys))
                    ]
                stored[index] = store_chunk(batch, row, length, prefix, picks)
        return stored

    def _picked(self, entries: ChunkEntries, budget: int) -> torch.Tensor:
        selector = self.stages.selector
        picked = selector.select(entries, budget)
        heads, count = int(entries.keys.shape[0]), min(budget, entries.tokens)
        return checked_picks(selector, picked, heads, count)
