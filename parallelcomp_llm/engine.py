"""`ParallelCompEngine`: answer a question over a context far longer than the model's window.

One request runs: chunking → batched chunk prefill → question pass per chunk (relevance and KV
scores) → chunk eviction and KV eviction → merge of the kept KV → question pass over the merged KV
(with attention-bias calibration) → decoding. Requests run on the model through the engine's
`Scheduler`, one batch at a time; requests over the same context that wait together share a batch.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from . import eviction
from .admission import Deadline
from .answer import Answer, AnswerStats, AnswerStream, ChunkInfo
from .attention import AttentionProbe
from .chunking import Chunk, split_into_chunks
from .config import ParallelCompConfig
from .context_cache import CacheStore, ContextCache, ContextCacheMismatchError, digest
from .decoding import DecodeRow, TextDeltas, TokenSampler, decode_rows
from .errors import (
    ContextTooLongError,
    DeviceMemoryError,
    InvalidConfigError,
    InvalidInputError,
)
from .final_pass import FinalRow, FinalState, run_final_pass
from .kvcache import run_on_cache
from .merging import StoredChunk, merge_chunks, store_chunk
from .models import (
    check_supported,
    load_model_and_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_kernel,
    use_hooked_attention,
)
from .prefill import (
    EncodedBatch,
    auto_batch_size,
    kv_bytes_per_token,
    prefill_rows,
    question_pass,
)
from .prompt import PromptBuilder, PromptTemplate
from .scheduler import BatchControl, Job, Scheduler

Context = str | Sequence[str] | ContextCache


class GenerationOptions(TypedDict, total=False):
    """Per-call decoding settings accepted by `generate`, `stream`, `complete` and `chat`."""

    max_new_tokens: int | None
    stop: str | Sequence[str] | None
    temperature: float
    top_p: float
    top_k: int | None
    seed: int | None


@dataclass(frozen=True)
class DecodeOptions:
    """Validated per-call decoding settings."""

    max_new_tokens: int
    stop: list[str]
    temperature: float
    top_p: float
    top_k: int | None
    seed: int | None
    deadline: Deadline


@dataclass
class _Encoding:
    """The chunks of a context and where its encoded KV may come from."""

    chunks: list[Chunk]
    context_tokens: int
    context_key: str
    cache: ContextCache | None


@dataclass
class _Request:
    encoding: _Encoding
    question_ids: list[int]
    options: DecodeOptions
    progress: bool

    @property
    def chunks(self) -> list[Chunk]:
        return self.encoding.chunks


class ParallelCompEngine:
    """Long-context question answering with ParallelComp over a transformers causal LM.

    Build it with `from_pretrained`, `default`, or from a loaded model and tokenizer (the engine
    then switches the model to its hooked attention kernel and uses the model's device and dtype).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ParallelCompConfig | None = None,
    ) -> None:
        config = config or ParallelCompConfig()
        check_supported(model.config)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        kernel = resolve_kernel(config.attn_implementation, self.device)
        if config.calibration_layers is not None:
            if kernel != "sdpa":
                raise InvalidConfigError(
                    "attention-bias calibration needs attn_implementation='sdpa'"
                )
            if config.calibration_layers[1] >= model.config.num_hidden_layers:
                raise InvalidConfigError(
                    f"calibration_layers {config.calibration_layers} outside the model's "
                    f"{model.config.num_hidden_layers} layers"
                )
        use_hooked_attention(model, kernel)
        self.native_window: int = int(model.config.max_position_embeddings)
        """The model's trained context window, in tokens."""
        self.prompts = PromptBuilder(
            tokenizer, PromptTemplate.for_tokenizer(tokenizer, config.use_chat_template)
        )
        overhead = (
            len(self.prompts.prefix_ids)
            + config.question_reserve_tokens
            + config.answer_reserve_tokens
        )
        room = self.native_window - overhead
        chunk_tokens = config.chunk_tokens or min(
            room, max(16, int(room * config.chunk_room_fraction))
        )
        if chunk_tokens > room or chunk_tokens < 16:
            raise InvalidConfigError(
                f"chunk_tokens={chunk_tokens} does not fit the trained window of "
                f"{self.native_window} tokens with the prompt template "
                f"({len(self.prompts.prefix_ids)}), question_reserve_tokens "
                f"({config.question_reserve_tokens}) and answer_reserve_tokens "
                f"({config.answer_reserve_tokens}): at most {room}"
            )
        self.config = config.model_copy(
            update={
                "chunk_tokens": chunk_tokens,
                "attn_implementation": kernel,
                "device": str(self.device),
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            }
        )
        self._separator_ids = self.prompts.encode(config.document_separator)
        self._one_chunk_room = room if config.chunk_tokens is None and chunk_tokens < room else None
        """With default chunks smaller than the room: a context that fits the room stays one
        chunk."""
        self.model_key = self._model_key()
        """Identity of the model and of the settings that shape encoded chunks."""
        self._store = CacheStore(
            self.device,
            int(config.context_cache_device_fraction * _device_memory(self.device)),
            int(config.context_cache_host_fraction * _host_memory()),
        )
        self._eos_ids = self.eos_token_ids()
        self._pad_id = next(
            (t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0
        )
        self._scheduler = Scheduler(config.max_waiting_requests, config.max_batch_requests)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | Path,
        config: ParallelCompConfig | None = None,
        **overrides,
    ) -> ParallelCompEngine:
        """Load a supported model and its tokenizer; `overrides` are `ParallelCompConfig` fields."""
        settings = (config.model_dump() if config else {}) | overrides
        config = ParallelCompConfig(**settings)
        device = resolve_device(config.device)
        model, tokenizer = load_model_and_tokenizer(
            model_name_or_path, device, resolve_dtype(config.dtype, device)
        )
        return cls(model, tokenizer, config)

    @classmethod
    def default(cls, config: ParallelCompConfig | None = None, **overrides) -> ParallelCompEngine:
        """The embedded default model, SmolLM2-135M-Instruct, fetched and cached on first use."""
        from .default_model import default_model_path

        return cls.from_pretrained(default_model_path(), config, **overrides)

    @property
    def context_window(self) -> int:
        """Most context tokens a request may have (`max_context_tokens`)."""
        return self.config.max_context_tokens

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` in the model's tokenizer (no special tokens)."""
        return len(self.prompts.encode(text))

    def encode(self, context: str | Sequence[str], *, progress: bool = False) -> ContextCache:
        """Prefill every chunk of `context` once; pass the result to `generate` or `stream` in
        place of the text to answer further questions without encoding it again. The engine also
        keeps recently encoded contexts by itself (see `context_cache_*_fraction`)."""
        encoding = self._encoding(context)
        if encoding.cache is not None:
            return encoding.cache
        job = Job(
            [encoding],
            lambda encodings, control: self._encode_events(encodings[0], progress, control),
            key=None,
            deadline=Deadline(self.config.request_timeout_s),
            result_type=ContextCache,
        )
        [events] = self._scheduler.submit(job)
        return next(events)

    def load_context_cache(self, path: str | Path) -> ContextCache:
        """Read a cache saved with `ContextCache.save`; refuse one made for another model or
        other settings (`ContextCacheMismatchError`)."""
        cache = ContextCache.load(path, self.device)
        self._check_cache(cache)
        self._store.put(cache)
        return cache

    def clear_context_cache(self) -> None:
        """Forget every context the engine keeps for reuse."""
        self._store.clear()

    def generate(
        self,
        context: Context,
        question: str,
        *,
        progress: bool = False,
        **options: Unpack[GenerationOptions],
    ) -> Answer:
        """Answer `question` over `context`: a text, a sequence of documents, or a `ContextCache`.

        `options`: `max_new_tokens` (default `answer_reserve_tokens`), `stop` (a string or a
        list), `temperature` (0 = greedy), `top_p`, `top_k`, `seed`. `progress` shows a bar over
        chunk prefill.
        """
        return _drain(self.stream(context, question, progress=progress, **options))

    def stream(
        self,
        context: Context,
        question: str,
        *,
        progress: bool = False,
        **options: Unpack[GenerationOptions],
    ) -> AnswerStream:
        """Like `generate`, as an iterator of text deltas (`AnswerStream.answer` at the end).

        Input is checked here, before any model work; errors raise from this call, and so does
        `EngineBusyError`. The request is queued by this call and runs whether or not the stream
        is read; closing the stream, or dropping it, cancels it.
        """
        decode = self._decode_options(**options)
        request = self._prepare(self._encoding(context), question, decode, progress)
        return self._answer_streams([request])[0]

    def generate_batch(
        self,
        context: Context,
        questions: Sequence[str],
        *,
        progress: bool = False,
        **options: Unpack[GenerationOptions],
    ) -> list[Answer]:
        """Answer several questions over one context in one call: the context is encoded once,
        each question selects its own chunks and KV, and the final passes and decoding run as one
        batch. Answers come in the order of `questions`."""
        if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
            raise InvalidInputError("questions must be a non-empty sequence of strings")
        decode = self._decode_options(**options)
        encoding = self._encoding(context)
        requests = [self._prepare(encoding, q, decode, progress) for q in questions]
        return [_drain(stream) for stream in self._answer_streams(requests)]

    def complete(self, prompt: str, **options: Unpack[GenerationOptions]) -> Answer:
        """Continue `prompt` as an ordinary LLM (no context, no template; within the trained window)."""
        return _drain(self.stream_complete(prompt, **options))

    def stream_complete(self, prompt: str, **options: Unpack[GenerationOptions]) -> AnswerStream:
        """`complete` as an iterator of text deltas."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError("prompt must be a non-empty string")
        bos = self.tokenizer.bos_token_id
        ids = [bos] if self.prompts.template.add_bos and bos is not None else []
        ids += self.prompts.encode(prompt)
        return self._prompt_stream(ids, self._decode_options(**options))

    def chat(
        self, messages: Sequence[dict[str, str]], **options: Unpack[GenerationOptions]
    ) -> Answer:
        """Answer a chat (role/content dicts) with the chat template, no separate context."""
        return _drain(self.stream_chat(messages, **options))

    def stream_chat(
        self, messages: Sequence[dict[str, str]], **options: Unpack[GenerationOptions]
    ) -> AnswerStream:
        """`chat` as an iterator of text deltas."""
        if not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        ):
            raise InvalidInputError(
                "messages must be a non-empty list of {'role', 'content'} dicts"
            )
        ids = self.prompts.chat_prompt_ids(list(messages))
        return self._prompt_stream(ids, self._decode_options(**options))

    # -- validation -------------------------------------------------------------------------

    def _decode_options(
        self,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> DecodeOptions:
        if max_new_tokens is None:
            max_new_tokens = self.config.answer_reserve_tokens
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 1
        ):
            raise InvalidInputError(
                f"max_new_tokens must be a positive int, got {max_new_tokens!r}"
            )
        if isinstance(stop, str):
            stop = [stop]
        stop = list(stop or [])
        if not all(isinstance(s, str) and s for s in stop):
            raise InvalidInputError("stop must be a string or a list of non-empty strings")
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise InvalidInputError(f"temperature must be >= 0, got {temperature!r}")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {top_p!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise InvalidInputError(f"top_k must be a positive int or None, got {top_k!r}")
        limit = self.config.max_new_tokens_limit
        if limit is not None and max_new_tokens > limit:
            raise InvalidInputError(
                f"max_new_tokens={max_new_tokens} is over this engine's limit of {limit}"
            )
        deadline = Deadline(self.config.request_timeout_s)
        return DecodeOptions(
            max_new_tokens, stop, float(temperature), float(top_p), top_k, seed, deadline
        )

    def _documents(self, context: Context) -> list[str]:
        if isinstance(context, str):
            documents = [context]
        elif isinstance(context, Sequence) and not isinstance(context, (bytes, bytearray)):
            documents = list(context)
        else:
            raise InvalidInputError(
                f"context must be a string or a sequence of strings, got {type(context).__name__}"
            )
        for index, document in enumerate(documents):
            if not isinstance(document, str):
                raise InvalidInputError(
                    f"context document {index} is a {type(document).__name__}, not a string"
                )
        if not any(document.strip() for document in documents):
            raise InvalidInputError("context is empty: give at least one non-blank document")
        return documents

    def _check_cache(self, cache: ContextCache) -> None:
        if cache.model_key != self.model_key:
            raise ContextCacheMismatchError(
                "this context cache was made for another model or other chunking settings; "
                "encode the context again with this engine"
            )

    def _encoding(self, context: Context) -> _Encoding:
        """Tokenize and chunk `context`, or take the chunks of a given `ContextCache`."""
        if isinstance(context, ContextCache):
            self._check_cache(context)
            return _Encoding(context.chunks, context.context_tokens, context.context_key, context)
        documents = [self.prompts.encode(d) if d.strip() else [] for d in self._documents(context)]
        context_tokens = sum(len(ids) for ids in documents)
        if context_tokens > self.config.max_context_tokens:
            raise ContextTooLongError(
                f"context has {context_tokens} tokens, more than max_context_tokens="
                f"{self.config.max_context_tokens}; raise the limit or pass less text"
            )
        return _Encoding(
            self._split(documents, context_tokens),
            context_tokens,
            digest(self.model_key, documents),
            None,
        )

    def _split(self, documents: list[list[int]], context_tokens: int) -> list[Chunk]:
        """Chunks of the tokenized documents: one chunk when they fit the room the trained window
        leaves and the chunk size is the default one, else chunks of `chunk_tokens`."""
        if self._one_chunk_room is not None and context_tokens <= self._one_chunk_room:
            whole = split_into_chunks(documents, self._one_chunk_room, self._separator_ids)
            if len(whole) <= 1:
                return whole
        return split_into_chunks(documents, self.config.chunk_tokens, self._separator_ids)

    def _prepare(
        self, encoding: _Encoding, question: str, options: DecodeOptions, progress: bool
    ) -> _Request:
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError("question is empty")
        question_ids = self.prompts.question_ids(question)
        longest = max(len(chunk) for chunk in encoding.chunks)
        needed = len(self.prompts.prefix_ids) + longest + len(question_ids) + options.max_new_tokens
        if needed > self.native_window:
            raise InvalidInputError(
                f"the question ({len(question_ids)} tokens with its template) and max_new_tokens="
                f"{options.max_new_tokens} do not fit after a chunk of {longest} tokens in the "
                f"trained window of {self.native_window}; shorten the question, lower "
                "max_new_tokens, or raise question_reserve_tokens / answer_reserve_tokens"
            )
        return _Request(encoding, question_ids, options, progress)

    def _model_key(self) -> str:
        parameters = list(self.model.parameters())
        sample = [
            float(p.detach().flatten()[:4096].double().sum())
            for p in (parameters[0], parameters[-1])
        ]
        return digest(
            self.model.config.to_json_string(),
            sample,
            str(parameters[0].dtype),
            self.config.chunk_tokens,
            self._one_chunk_room,
            self.prompts.prefix_ids,
            self._separator_ids,
        )

    def eos_token_ids(self) -> set[int]:
        """Token ids that end an answer: the generation config's EOS ids and the tokenizer's."""
        ids: set[int] = set()
        generation = getattr(self.model, "generation_config", None)
        for source in (getattr(generation, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source is not None:
                ids.update(int(t) for t in source)
        return ids

    # -- the request ------------------------------------------------------------------------

    def _answer_streams(self, requests: list[_Request]) -> list[AnswerStream]:
        """Queue one call's questions over one context; while they wait, other callers' questions
        over the same context may join their batch."""
        job = Job(
            requests,
            self._answer_events,
            key=requests[0].encoding.context_key,
            deadline=requests[0].options.deadline,
            result_type=Answer,
        )
        return [AnswerStream(events) for events in self._scheduler.submit(job)]

    def _answer_events(
        self, requests: list[_Request], control: BatchControl
    ) -> Generator[tuple[int, str | Answer], None, None]:
        """Answer several questions over one context: shared chunk encoding, per-question
        selection, one batched final pass and decoding. Yields (request index, delta or Answer).

        The requests share a context key; an explicit `ContextCache` among them is used for all."""
        with_cache = (r.encoding for r in requests if r.encoding.cache is not None)
        encoding = next(with_cache, requests[0].encoding)
        with self._reporting_memory_errors():
            started = start_measuring(self.device)
            stats = [
                AnswerStats(
                    context_tokens=encoding.context_tokens,
                    chunks_total=len(encoding.chunks),
                    batch_size=len(requests),
                )
                for _ in requests
            ]
            rows = []
            selections = self._encode_and_select(encoding, requests, stats, control)
            for request, row_stats, (stored, kept) in zip(requests, stats, selections, strict=True):
                merged = merge_chunks(stored, kept, self.config)
                del stored
                row_stats.kv_entries_kept = merged.entries
                row_stats.prompt_tokens = merged.entries + len(request.question_ids)
                start = len(self.prompts.prefix_ids) + max(len(encoding.chunks[i]) for i in kept)
                rows.append(FinalRow(merged, request.question_ids, start))
            del selections
            calibration = None
            if self.config.calibration_layers is not None:
                first, last = self.config.calibration_layers
                calibration = (range(first, last + 1), self.config.calibration_threshold)
            state = run_final_pass(self.model, rows, self._pad_id, calibration)
            del rows
            options = [r.options for r in requests]
            yield from self._decode(state, options, stats, started, control)

    @contextlib.contextmanager
    def _reporting_memory_errors(self) -> Iterator[None]:
        """Turn running out of device memory into `DeviceMemoryError` after freeing what the
        batch allocated."""
        try:
            yield
        except torch.OutOfMemoryError:
            release_cached_memory(self.device)
            raise DeviceMemoryError(
                "the device ran out of memory even with one chunk per forward pass; lower "
                "chunk_tokens, keep_chunks or kv_budget (or max_batch_requests), or "
                "use a larger device"
            ) from None

    def _encode_events(
        self, encoding: _Encoding, progress: bool, control: BatchControl
    ) -> Generator[tuple[int, ContextCache], None, None]:
        """Encode every chunk of one context for `encode`; yield (0, its ContextCache)."""
        with self._reporting_memory_errors():
            batches = list(
                self._encoded_batches(encoding, AnswerStats(), progress, control, explicit=True)
            )
        cache = ContextCache(
            self.model_key, encoding.context_key, encoding.chunks, encoding.context_tokens, batches
        )
        yield 0, cache

    def _prompt_stream(self, prompt_ids: list[int], options: DecodeOptions) -> AnswerStream:
        if len(prompt_ids) + options.max_new_tokens > self.native_window:
            raise InvalidInputError(
                f"prompt ({len(prompt_ids)} tokens) plus max_new_tokens={options.max_new_tokens} "
                f"exceeds the trained window of {self.native_window}; pass long text as context"
            )
        job = Job(
            [prompt_ids],
            lambda prompts, control: self._prompt_events(prompts[0], options, control),
            key=None,
            deadline=options.deadline,
            result_type=Answer,
        )
        [events] = self._scheduler.submit(job)
        return AnswerStream(events)

    def _prompt_events(
        self, prompt_ids: list[int], options: DecodeOptions, control: BatchControl
    ) -> Generator[tuple[int, str | Answer], None, None]:
        with self._reporting_memory_errors():
            started = start_measuring(self.device)
            stats = AnswerStats(prompt_tokens=len(prompt_ids))
            state = self._prefill_prompt(prompt_ids)
            yield from self._decode(state, [options], [stats], started, control)

    def _encode_and_select(
        self,
        encoding: _Encoding,
        requests: list[_Request],
        stats: list[AnswerStats],
        control: BatchControl,
    ) -> list[tuple[list[StoredChunk], list[int]]]:
        """Encode (or reuse) every chunk once; for each question, score the chunks, evict KV
        inside them and pick the kept ones. Returns (stored chunks, kept indices) per question."""
        config = self.config
        chunks, prefix = encoding.chunks, len(self.prompts.prefix_ids)
        keep = config.chunks_to_keep(len(chunks))
        rank = keep < len(chunks)
        budget = config.chunk_kv_budget(len(chunks))
        evict = budget is not None and any(len(chunk) > budget for chunk in chunks)
        stored: list[list[StoredChunk]] = [[] for _ in requests]
        scores: list[list[float]] = [[] for _ in requests]
        progress = any(request.progress for request in requests)
        for batch in self._encoded_batches(encoding, stats[0], progress, control):
            for number, request in enumerate(requests):
                window = min(config.observation_window, len(request.question_ids))
                probe = AttentionProbe(
                    window=window
                    if evict or (rank and config.chunk_scoring == "attention")
                    else None
                )
                if rank or evict:
                    logits = question_pass(
                        self.model, batch, request.question_ids, probe, self._pad_id
                    )
                    if rank:
                        scores[number].extend(self._chunk_scores(batch, logits, probe, request))
                    del logits
                for row, index in enumerate(batch.chunk_indices):
                    keep_prefix = index == 0 or not config.dedupe_prefix
                    stored[number].append(
                        store_chunk(
                            batch,
                            row,
                            len(chunks[index]),
                            prefix,
                            probe.window_scores,
                            keep_prefix,
                            budget,
                            config,
                        )
                    )
            del batch
        selections = []
        for number, row_stats in enumerate(stats):
            row_stats.context_cache_hit = stats[0].context_cache_hit
            row_stats.chunks_prefilled = stats[0].chunks_prefilled if number == 0 else 0
            if rank:
                kept = eviction.chunks_to_keep(
                    scores[number], keep, lower_is_better=config.chunk_scoring == "nll"
                )
                row_stats.score_kind = config.chunk_scoring
            else:
                kept = list(range(len(chunks)))
            row_stats.chunks_kept = len(kept)
            row_stats.chunks = [
                ChunkInfo(
                    documents=tuple(chunk.documents),
                    tokens=len(chunk),
                    score=scores[number][i] if rank else None,
                    kept=i in kept,
                )
                for i, chunk in enumerate(chunks)
            ]
            selections.append((stored[number], kept))
        return selections

    def _encoded_batches(
        self,
        encoding: _Encoding,
        stats: AnswerStats,
        progress: bool,
        control: BatchControl,
        explicit: bool = False,
    ) -> Iterator[EncodedBatch]:
        """The context's encoded batches: from a cache when there is one, else prefilled now.

        Newly encoded batches are offered to the engine's store when the context fits its budget
        (on the device if it fits the device share, else in host memory). An `explicit` encoding
        stays on the device for its caller and goes to the store only if it fits the device
        share. A batch that runs out of device memory is retried with half as many chunks."""
        cache = encoding.cache or self._store.get(encoding.context_key)
        if cache is not None:
            stats.context_cache_hit = True
            yield from cache.to(self.device).batches
            return
        chunks, prefix = encoding.chunks, self.prompts.prefix_ids
        row_tokens = len(prefix) + max(len(chunk) for chunk in chunks)
        batch_size = self.config.chunk_batch_size or auto_batch_size(
            self.model,
            row_tokens + self.config.question_reserve_tokens,
            self.config.question_reserve_tokens,
        )
        estimate = kv_bytes_per_token(self.model) * row_tokens * len(chunks)
        fits_device = estimate <= self._store.device_budget
        store = estimate <= self._store.capacity and (fits_device or not explicit)
        keep = store or explicit
        holder = self.device if explicit or fits_device else torch.device("cpu")
        kept: list[EncodedBatch] = []
        bar = tqdm(total=len(chunks), desc="prefill", unit="chunk", disable=not progress)
        first = 0
        while first < len(chunks):
            control.check()
            indices = list(range(first, min(first + batch_size, len(chunks))))
            rows = [prefix + chunks[i].token_ids for i in indices]
            try:
                batch = prefill_rows(self.model, rows, self._pad_id, indices)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                release_cached_memory(self.device)
                continue
            first += len(indices)
            stats.chunks_prefilled += len(indices)
            yield batch
            if keep:
                kept.append(batch.to(holder))
            bar.update(len(indices))
        bar.close()
        if store:
            self._store.put(
                ContextCache(
                    self.model_key, encoding.context_key, chunks, encoding.context_tokens, kept
                )
            )

    def _chunk_scores(self, batch, logits, probe, request: _Request) -> list[float]:
        if self.config.chunk_scoring == "nll":
            return eviction.question_nll(logits, request.question_ids).tolist()
        prefix = len(self.prompts.prefix_ids)
        starts = [prefix] * len(batch.lengths)
        ends = batch.lengths
        return eviction.attention_mass(probe.window_scores, probe.window, starts, ends).tolist()

    @torch.inference_mode()
    def _prefill_prompt(self, token_ids: list[int]) -> FinalState:
        """Run a plain prompt from position 0 with a fresh cache."""
        cache = DynamicCache()
        input_ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(len(token_ids), device=self.device)[None]
        logits = run_on_cache(self.model, input_ids, positions, cache, logits_to_keep=1)
        return FinalState(cache, None, logits[:, -1], [len(token_ids)], None)

    def _decode(
        self,
        state: FinalState,
        options: list[DecodeOptions],
        stats: list[AnswerStats],
        started: float,
        control: BatchControl,
    ) -> Iterator[tuple[int, str | Answer]]:
        """Decode every row; yield (row, text delta) as text becomes final, and (row, Answer) as
        soon as the row has finished. A row that `control` no longer keeps stops decoding."""
        prefilled = device_work_done(self.device)
        rows, deltas = [], []
        for row_options, position in zip(options, state.next_positions, strict=True):
            sampler = TokenSampler(
                row_options.temperature,
                row_options.top_p,
                row_options.top_k,
                row_options.seed,
                self.device,
            )
            rows.append(DecodeRow(sampler, row_options.max_new_tokens, position))
            deltas.append(TextDeltas(self.tokenizer, row_options.stop))
        steps = decode_rows(
            self.model,
            state.cache,
            state.logits,
            rows,
            self._eos_ids,
            self._pad_id,
            state.attention_mask,
            state.probe,
        )
        answered: set[int] = set()

        def answers() -> Iterator[tuple[int, str | Answer]]:
            for index, (row, row_deltas, row_stats) in enumerate(
                zip(rows, deltas, stats, strict=True)
            ):
                if row.finish is None or index in answered:
                    continue
                answered.add(index)
                tail = row_deltas.flush()
                if tail:
                    yield index, tail
                row_stats.new_tokens = len(row_deltas.token_ids)
                row_stats.prefill_seconds = prefilled - started
                row_stats.decode_seconds = time.perf_counter() - prefilled
                row_stats.peak_memory_bytes = peak_memory(self.device)
                yield index, Answer(row_deltas.emitted, row_deltas.token_ids, row.finish, row_stats)

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
            yield from answers()
        yield from answers()


def _drain(stream: AnswerStream) -> Answer:
    for _ in stream:
        pass
    assert stream.answer is not None
    return stream.answer


def start_measuring(device: torch.device) -> float:
    """Start of a measured request: reset the CUDA peak-memory counter; the current time."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return time.perf_counter()


def device_work_done(device: torch.device) -> float:
    """The time once the work queued on `device` has finished (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory(device: torch.device) -> int:
    """Peak memory in bytes: allocated on CUDA since `start_measuring`, else the process's peak
    resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_cached_memory(device: torch.device) -> None:
    """Return the CUDA allocator's unused cached blocks to the device."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return 0


def _host_memory() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
