"""The ParallelComp method, stage by stage, for a batch of questions over one context.

`Pipeline.answer` reads as the paper's method: the context's chunks are prefilled in parallel
(positions restarting in every chunk); after each batch of chunks, each question runs over them
once (the question pass), its scorer rates every chunk and its selector picks the KV entries each
chunk keeps; then each question keeps its most relevant chunks, merges their KV, runs once more
over the merged KV (with attention-bias calibration) and decodes. With `kept_chunks="reread"`,
a question whose kept chunks fit the trained window reads them again as one prompt instead of
merging their KV (`reread`), and no chunk's KV is kept for it when any choice would fit. The
stages are the objects of `parallelcomp_llm.stages`; every stage runs inside a traced span
(`tracing`), and a `StatsRecorder` per question fills its `AnswerStats`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .answer import Answer
from .attention import AttentionProbe
from .config import ParallelCompConfig
from .context_cache import CacheStore, ContextCache
from .decode_step import resolve_step_kind
from .decoding import Decoder
from .device import model_device, reporting_memory_errors, start_measuring
from .encoder import ChunkEncoder, PrefillCount
from .final_pass import FinalRow, run_final_pass, run_prompt
from .grammar import Grammars
from .merging import StoredChunk, merge_chunks, store_chunk
from .models import checked_between_layers, end_token_ids, pad_token_id, use_hooked_attention
from .prefill import EncodedBatch, question_pass
from .requests import Encoding, PromptRequest, Request
from .reread import Reread
from .scheduler import BatchControl
from .stages import BudgetSplit, ChunkEntries, QuestionEvidence, Stages, WindowAttention
from .stages.contract import (
    checked_picks,
    checked_relevance,
    checked_shares,
    checked_split,
    checked_surviving,
)
from .stats import StatsRecorder
from .tracing import StageTracer

Events = Iterator[tuple[int, str | Answer]]
"""(row, text delta) as text becomes final, and (row, Answer) when the row has finished."""


def most_relevant(relevance: list[float], keep: int) -> list[int]:
    """The indices of the `keep` most relevant chunks, in context order (ties: the earlier)."""
    order = sorted(range(len(relevance)), key=lambda index: relevance[index], reverse=True)
    return sorted(order[:keep])


@dataclass
class Selection:
    """One question's reading of the context, batch after batch: each chunk's relevance (scored
    whenever there is more than one chunk, for attribution) and, by chunk index, the KV after KV
    eviction of the chunks it may still keep (when `store`: the question may merge them)."""

    score: bool
    rank: bool
    evict: bool
    store: bool
    relevance: list[float] = field(default_factory=list)
    stored: dict[int, StoredChunk] = field(default_factory=dict)

    def add(self, stored: dict[int, StoredChunk], keep: int) -> None:
        """Take a batch's stored chunks; when chunks are ranked, hold on only to the `keep` most
        relevant so far (the chunks kept at the end are among them), so that memory holds at
        most `keep` chunks and one batch per question."""
        self.stored |= stored
        if self.rank:
            best = set(most_relevant(self.relevance, keep))
            self.stored = {index: chunk for index, chunk in self.stored.items() if index in best}

    @classmethod
    def under(cls, split: BudgetSplit, encoding: Encoding, store: bool) -> Selection:
        """What the budget asks of the context: rank its chunks when not all are kept, evict KV
        when a chunk is longer than its share and its KV is stored."""
        chunks, budget = encoding.chunks, split.entries_per_chunk
        long_chunk = budget is not None and any(len(chunk) > budget for chunk in chunks)
        rank = split.keep_chunks < len(chunks)
        return cls(score=len(chunks) > 1, rank=rank, evict=store and long_chunk, store=store)


class Pipeline:
    """ParallelComp over one model, with one set of stages."""

    def __init__(
        self,
        model: PreTrainedModel,
        stages: Stages,
        encoder: ChunkEncoder,
        decoder: Decoder,
        tracer: StageTracer,
        pad_id: int,
        dedupe_prefix: bool,
        kernel: str,
        reread: Reread | None,
    ) -> None:
        self.model = model
        self.stages = stages
        self.encoder = encoder
        self.decoder = decoder
        self.tracer = tracer
        self.pad_id = pad_id
        self.dedupe_prefix = dedupe_prefix
        self.kernel = kernel
        self.reread = reread

    @classmethod
    def build(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        stages: Stages,
        config: ParallelCompConfig,
        store: CacheStore,
        model_key: str,
        tracer: StageTracer,
        reread: Reread | None,
        grammars: Grammars,
    ) -> Pipeline:
        """The pipeline of an engine: its chunk encoder over `store`, its decoder (constrained by
        `grammars` where a request asks), and how it reads kept chunks again (None: it always
        merges them)."""
        pad_id = pad_token_id(tokenizer)
        encoder = ChunkEncoder(
            model,
            pad_id,
            config.chunk_batch_size,
            config.question_reserve_tokens,
            store,
            model_key,
            tracer,
        )
        calibrated = stages.calibrator is not None
        step_kind = resolve_step_kind(config.decode_step, model_device(model), model, calibrated)
        end_ids = end_token_ids(model, tokenizer)
        decoder = Decoder(model, tokenizer, end_ids, pad_id, tracer, step_kind, grammars)
        return cls(
            model,
            stages,
            encoder,
            decoder,
            tracer,
            pad_id,
            config.dedupe_prefix,
            config.attn_implementation,
            reread,
        )

    def answer(self, requests: list[Request], control: BatchControl) -> Events:
        """Answer questions over one context (one encoding; a `ContextCache` given with any of
        them serves all): shared chunk prefill, per-question selection, one batched final pass
        and decoding. The model is switched back to the engine's hooked attention kernel first,
        in case other code (a baseline over the same model) switched it."""
        use_hooked_attention(self.model, self.kernel)
        encoding = next((r.encoding for r in requests if r.encoding.cache), requests[0].encoding)
        device = model_device(self.model)
        with reporting_memory_errors(device):
            recorders = self.recorders(encoding, len(requests), device)
            budget, chunks = self.stages.budget, len(encoding.chunks)
            split = checked_split(budget, budget.split(chunks), chunks)
            selections = [
                Selection.under(split, encoding, self.may_merge(request, split))
                for request in requests
            ]
            count = PrefillCount()
            progress = any(request.progress for request in requests)
            with checked_between_layers(self.model, control.check):
                for batch in self.encoder.batches(encoding, count, progress):
                    for request, selection in zip(requests, selections, strict=True):
                        evidence = self.question_pass(batch, encoding, request, selection)
                        if selection.score:
                            selection.relevance += self.score(evidence)
                        if selection.store:
                            stored = self.select_kv(batch, encoding, evidence, split)
                            selection.add(stored, split.keep_chunks)
                        del evidence  # its logits: one question's at a time
                    del batch
                rows = []
                for number, (request, selection) in enumerate(
                    zip(requests, selections, strict=True)
                ):
                    recorders[number].prefilled(count.cache_hit, count.chunks if number == 0 else 0)
                    kept = self.keep_chunks(selection, split, encoding, request, recorders[number])
                    if self.rereads(kept, request):
                        rows.append(self.read_again(kept, request, recorders[number]))
                    else:
                        rows.append(
                            self.merge(selection, kept, encoding, request, recorders[number])
                        )
                del selections
                with self.tracer.span("final_pass"):
                    state = run_final_pass(self.model, rows, self.pad_id, self.stages.calibrator)
                del rows
            settings = [request.settings for request in requests]
            yield from self.decoder.answers(state, settings, recorders, control)

    def may_merge(self, request: Request, split: BudgetSplit) -> bool:
        """Whether the request may merge the KV of its kept chunks (so that it is stored): not
        when it reads them again whatever chunks it keeps."""
        return self.reread is None or not self.reread.fits_any_choice(split.keep_chunks, request)

    def rereads(self, kept: list[int], request: Request) -> bool:
        """Whether the request reads its kept chunks again rather than merging them."""
        chunks = request.encoding.chunks
        return self.reread is not None and self.reread.fits([len(chunks[i]) for i in kept], request)

    def recorders(
        self, encoding: Encoding, questions: int, device: torch.device
    ) -> list[StatsRecorder]:
        """A statistics recorder per question of a batch whose work starts now."""
        started = start_measuring(device)
        counts = {
            "context_tokens": encoding.context_tokens,
            "chunks_total": len(encoding.chunks),
            "batch_size": questions,
        }
        return [StatsRecorder(device, started, **counts) for _ in range(questions)]

    def question_pass(
        self, batch: EncodedBatch, encoding: Encoding, request: Request, selection: Selection
    ) -> QuestionEvidence | None:
        """The question after every chunk of `batch`, recording the attention the scorer and
        the selector read; None when nothing is scored or evicted."""
        if not (selection.score or selection.evict):
            return None
        scorer, selector = self.stages.scorer, self.stages.selector
        asked = [scorer.observation_window if selection.score else None]
        asked.append(selector.observation_window if selection.evict else None)
        question_ids = request.question_ids
        windows = {window: min(window, len(question_ids)) for window in asked if window}
        probe = AttentionProbe(windows=windows.values())
        with self.tracer.span("question_pass"):
            logits = question_pass(self.model, batch, question_ids, probe, self.pad_id)
        return QuestionEvidence(
            logits,
            question_ids,
            [slice(len(encoding.prefix_ids), length) for length in batch.lengths],
            {
                window: WindowAttention(probe.window_scores[queries], queries)
                for window, queries in windows.items()
            },
        )

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

    def keep_chunks(
        self,
        selection: Selection,
        split: BudgetSplit,
        encoding: Encoding,
        request: Request,
        recorder: StatsRecorder,
    ) -> list[int]:
        """The indices of the chunks that survive, in context order: the most relevant ones, as
        many as the budget policy lets survive."""
        chunks, scorer, budget = encoding.chunks, self.stages.scorer, self.stages.budget
        shares = [1.0]
        if selection.score:
            shares = scorer.shares(selection.relevance, len(request.question_ids))
            shares = checked_shares(scorer, shares, len(chunks))
        with self.tracer.span("chunk_eviction"):
            if selection.score:
                surviving = budget.surviving(shares, split.keep_chunks)
                surviving = checked_surviving(budget, surviving, split.keep_chunks)
                kept = most_relevant(selection.relevance, surviving)
            else:
                kept = [0]
        name = (scorer.name or type(scorer).__name__) if selection.score else None
        recorder.selected(chunks, kept, shares, name)
        return kept

    def merge(
        self,
        selection: Selection,
        kept: list[int],
        encoding: Encoding,
        request: Request,
        recorder: StatsRecorder,
    ) -> FinalRow:
        """The kept chunks' KV merged into one; the question starts after the longest of them."""
        calibrator = self.stages.calibrator
        with self.tracer.span("merge"):
            merged = merge_chunks(
                selection.stored,
                kept,
                self.dedupe_prefix,
                calibrator.layer_range if calibrator else None,
            )
        selection.stored = {}
        recorder.merged(merged.entries, len(request.question_ids))
        start = len(encoding.prefix_ids) + max(len(encoding.chunks[i]) for i in kept)
        return FinalRow(merged, request.question_ids, start)

    def read_again(self, kept: list[int], request: Request, recorder: StatsRecorder) -> FinalRow:
        """The kept chunks as one prompt, in document order, with the question (`reread`)."""
        with self.tracer.span("reread"):
            row = self.reread.row(kept, request)
        recorder.reread(
            len(row.question_ids) - len(request.question_ids), len(request.question_ids)
        )
        return row

    def encode(
        self, encoding: Encoding, progress: bool, control: BatchControl
    ) -> Iterator[tuple[int, ContextCache]]:
        """Prefill every chunk of one context, for `engine.encode`: yield (0, its cache)."""
        device = model_device(self.model)
        with reporting_memory_errors(device), checked_between_layers(self.model, control.check):
            batches = list(self.encoder.batches(encoding, PrefillCount(), progress, explicit=True))
        yield (
            0,
            ContextCache(
                self.encoder.model_key,
                encoding.context_key,
                encoding.chunks,
                encoding.context_tokens,
                batches,
                encoding.prefix_ids,
            ),
        )

    def continue_prompt(self, request: PromptRequest, control: BatchControl) -> Events:
        """Run a plain prompt as an ordinary LLM and decode (`complete`, `chat`)."""
        device = model_device(self.model)
        with reporting_memory_errors(device):
            recorder = StatsRecorder(
                device, start_measuring(device), prompt_tokens=len(request.prompt_ids)
            )
            with (
                self.tracer.span("prompt_prefill"),
                checked_between_layers(self.model, control.check),
            ):
                state = run_prompt(self.model, request.prompt_ids)
            yield from self.decoder.answers(state, [request.settings], [recorder], control)
