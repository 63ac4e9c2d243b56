"""The ParallelComp method, stage by stage, for a batch of questions over one context.

`Pipeline.answer` reads as the paper's method: the context's chunks are prefilled in parallel
(positions restarting in every chunk); after each batch of chunks, each question runs over them
once (the question pass), its scorer rates every chunk and its selector picks the KV entries each
chunk keeps; then each question keeps its most relevant chunks, merges their KV, runs once more
over the merged KV (with attention-bias calibration) and decodes. With `kept_chunks="reread"`,
a question whose kept chunks fit the trained window reads them again as one prompt instead of
merging their KV (`reread`), and no chunk's KV is kept for it when any choice would fit. The
stages are the objects of `parallelcomp_llm.stages`; every stage runs inside a traced span
(`tracing`), and a `StatsRecorder` per question fills its `AnswerStats`. The per-batch work
(question pass, scoring, KV selection) is `ChunkReader`'s; a scorer that reads only the first
layers (`chunk_scoring="heads"`) lets the chunk prefill stop after them when no question keeps
any chunk's KV (`prefill_depth`); with prefill workers
(`prefill_workers`), the batches of a long context run on them and their selections are added
into each question's.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .answer import Answer
from .chunk_reader import ChunkReader, Selection, most_relevant
from .config import ParallelCompConfig
from .context_cache import CacheStore, ContextCache
from .decode_step import resolve_step_kind
from .decoding import Decoder
from .device import layer_devices, model_devices, reporting_memory_errors, start_measuring
from .encoder import ChunkEncoder, PrefillCount
from .final_pass import FinalRow, run_final_pass, run_prompt
from .grammar import Grammars
from .merging import merge_chunks
from .models import checked_between_layers, end_token_ids, pad_token_id, use_hooked_attention
from .prefill_workers import ChunkBatches, PrefillWorkers
from .requests import Encoding, PromptRequest, Request
from .reread import Reread
from .scheduler import BatchControl
from .stages import BudgetSplit, Stages
from .stages.contract import checked_shares, checked_split, checked_surviving
from .stats import StatsRecorder
from .tracing import StageTracer

Events = Iterator[tuple[int, str | Answer]]
"""(row, text delta) as text becomes final, and (row, Answer) when the row has finished."""


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
        self.reader = ChunkReader(model, stages, tracer, pad_id)
        self.workers: PrefillWorkers | None = None
        """Where the chunk batches of a long context run when set; else here."""

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
        step_kind = resolve_step_kind(config.decode_step, model_devices(model), model, calibrated)
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
        devices = model_devices(self.model)
        with reporting_memory_errors(*devices):
            recorders = self.recorders(encoding, len(requests), devices)
            budget, chunks = self.stages.budget, len(encoding.chunks)
            split = checked_split(budget, budget.split(chunks), chunks)
            selections = [
                Selection.under(split, encoding, self.may_merge(request, split))
                for request in requests
            ]
            count = PrefillCount()
            progress = any(request.progress for request in requests)
            questions = [request.question_ids for request in requests]
            with checked_between_layers(self.model, control.check):
                self.read_chunks(encoding, questions, selections, split, count, progress, control)
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

    def read_chunks(
        self,
        encoding: Encoding,
        questions: list[list[int]],
        selections: list[Selection],
        split: BudgetSplit,
        count: PrefillCount,
        progress: bool,
        control: BatchControl,
    ) -> None:
        """Every batch of the context's chunks read for every question, into its selection: by
        the prefill workers when there are some and the context takes more than one batch to
        prefill (and is not kept encoded), else here."""
        plan = self.encoder.plan(encoding) if self.workers is not None else None
        if plan is None or len(plan) < 2:
            depth = self.prefill_depth(selections)
            for batch in self.encoder.batches(encoding, count, progress, depth=depth):
                self.reader.read(batch, encoding, questions, selections, split)
            return
        layers = layer_devices(self.model)
        work = ChunkBatches(encoding, plan, questions, selections, split)
        with self.tracer.span("chunk_prefill"):
            for parts in self.workers.read(work, control.check):
                for selection, part in zip(selections, parts, strict=True):
                    selection.add(part.relevance, part.to(layers).stored, split.keep_chunks)
        count.chunks += len(encoding.chunks)

    def read_batches(
        self, work: ChunkBatches, control: BatchControl
    ) -> Iterator[tuple[int, list[Selection]]]:
        """Prefill the batches of `work` and read them for its questions, for a prefill worker:
        yield (0, the questions' selections, on the CPU)."""
        devices = model_devices(self.model)
        with reporting_memory_errors(*devices), checked_between_layers(self.model, control.check):
            depth = self.prefill_depth(work.selections)
            for indices in work.batches:
                batch = self.encoder.prefill(work.encoding, indices, depth)
                self.reader.read(batch, work.encoding, work.questions, work.selections, work.split)
                del batch
        yield (0, [selection.to(torch.device("cpu")) for selection in work.selections])

    def prefill_depth(self, selections: list[Selection]) -> int | None:
        """How many of the model's layers, from the first, the chunk prefill runs for these
        questions: only those the scorer reads when no question keeps any chunk's KV (None:
        all)."""
        if any(selection.store for selection in selections):
            return None
        return self.stages.scorer.layers_read

    def may_merge(self, request: Request, split: BudgetSplit) -> bool:
        """Whether the request may merge the KV of its kept chunks (so that it is stored): not
        when it reads them again whatever chunks it keeps."""
        return self.reread is None or not self.reread.fits_any_choice(split.keep_chunks, request)

    def rereads(self, kept: list[int], request: Request) -> bool:
        """Whether the request reads its kept chunks again rather than merging them."""
        chunks = request.encoding.chunks
        return self.reread is not None and self.reread.fits([len(chunks[i]) for i in kept], request)

    def recorders(
        self, encoding: Encoding, questions: int, devices: tuple[torch.device, ...]
    ) -> list[StatsRecorder]:
        """A statistics recorder per question of a batch whose work starts now."""
        started = start_measuring(*devices)
        counts = {
            "context_tokens": encoding.context_tokens,
            "chunks_total": len(encoding.chunks),
            "batch_size": questions,
        }
        return [StatsRecorder(devices, started, **counts) for _ in range(questions)]

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
            shares = scorer.shares(selection.in_order(len(chunks)), len(request.question_ids))
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
        devices = model_devices(self.model)
        with reporting_memory_errors(*devices), checked_between_layers(self.model, control.check):
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
        devices = model_devices(self.model)
        with reporting_memory_errors(*devices):
            recorder = StatsRecorder(
                devices, start_measuring(*devices), prompt_tokens=len(request.prompt_ids)
            )
            with (
                self.tracer.span("prompt_prefill"),
                checked_between_layers(self.model, control.check),
            ):
                state = run_prompt(self.model, request.prompt_ids)
            yield from self.decoder.answers(state, [request.settings], [recorder], control)
