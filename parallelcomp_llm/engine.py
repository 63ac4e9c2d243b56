"""`ParallelCompEngine`: answer a question over a context far longer than the model's window.

One request runs: chunking → batched chunk prefill → question pass per chunk (relevance and KV
scores) → chunk eviction and KV eviction → merge of the kept KV → question pass over the merged KV
(with attention-bias calibration) → decoding. The engine serialises requests on its model.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from . import eviction
from .answer import Answer, AnswerStats, AnswerStream, ChunkInfo
from .attention import AttentionProbe, CalibrationRule, active_probe
from .chunking import Chunk, split_into_chunks
from .config import ParallelCompConfig
from .context_cache import CacheStore, ContextCache, ContextCacheMismatchError, digest
from .decoding import TextDeltas, TokenSampler, decode_tokens
from .errors import ContextTooLongError, InvalidConfigError, InvalidInputError
from .kvcache import cache_from_tensors
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

Context = str | Sequence[str] | ContextCache


@dataclass(frozen=True)
class DecodeOptions:
    """Validated per-call decoding settings."""

    max_new_tokens: int
    stop: list[str]
    temperature: float
    top_p: float
    top_k: int | None
    seed: int | None


@dataclass
class _StoredChunk:
    """A chunk's KV after KV eviction: per layer (kv_heads, entries, head_dim), and the offsets of
    the kept entries within the chunk (kv_heads, entries)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    offsets: list[torch.Tensor]
    prefix_keys: list[torch.Tensor] | None
    prefix_values: list[torch.Tensor] | None


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
        chunk_tokens = config.chunk_tokens or room
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
        self.model_key = self._model_key()
        """Identity of the model and of the settings that shape encoded chunks."""
        self._store = CacheStore(
            self.device,
            int(config.context_cache_device_fraction * _device_memory(self.device)),
            int(config.context_cache_host_fraction * _host_memory()),
        )
        self._eos_ids = self._eos_token_ids()
        self._pad_id = next(
            (t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0
        )
        self._lock = threading.Lock()

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
        with self._lock:
            batches = list(self._encoded_batches(encoding, AnswerStats(), progress, keep=True))
        return self._store.get(encoding.context_key) or ContextCache(
            self.model_key, encoding.context_key, encoding.chunks, encoding.context_tokens, batches
        )

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
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> Answer:
        """Answer `question` over `context`: a text, a sequence of documents, or a `ContextCache`."""
        stream = self.stream(
            context,
            question,
            max_new_tokens=max_new_tokens,
            stop=stop,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            progress=progress,
        )
        return _drain(stream)

    def stream(
        self,
        context: Context,
        question: str,
        *,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> AnswerStream:
        """Like `generate`, as an iterator of text deltas (`AnswerStream.answer` at the end).

        Input is checked here, before any model work; errors raise from this call.
        """
        options = self._decode_options(max_new_tokens, stop, temperature, top_p, top_k, seed)
        request = self._prepare(context, question, options, progress)
        return AnswerStream(self._answer_events(request))

    def complete(self, prompt: str, **kwargs) -> Answer:
        """Continue `prompt` as an ordinary LLM (no context, no template; within the trained window)."""
        return _drain(self.stream_complete(prompt, **kwargs))

    def stream_complete(
        self,
        prompt: str,
        *,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> AnswerStream:
        """`complete` as an iterator of text deltas."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError("prompt must be a non-empty string")
        bos = self.tokenizer.bos_token_id
        ids = [bos] if self.prompts.template.add_bos and bos is not None else []
        ids += self.prompts.encode(prompt)
        options = self._decode_options(max_new_tokens, stop, temperature, top_p, top_k, seed)
        return self._prompt_stream(ids, options)

    def chat(self, messages: Sequence[dict[str, str]], **kwargs) -> Answer:
        """Answer a chat (role/content dicts) with the chat template, no separate context."""
        return _drain(self.stream_chat(messages, **kwargs))

    def stream_chat(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> AnswerStream:
        """`chat` as an iterator of text deltas."""
        if not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        ):
            raise InvalidInputError(
                "messages must be a non-empty list of {'role', 'content'} dicts"
            )
        ids = self.prompts.chat_prompt_ids(list(messages))
        options = self._decode_options(max_new_tokens, stop, temperature, top_p, top_k, seed)
        return self._prompt_stream(ids, options)

    # -- validation -------------------------------------------------------------------------

    def _decode_options(
        self,
        max_new_tokens: int | None,
        stop: str | Sequence[str] | None,
        temperature: float,
        top_p: float,
        top_k: int | None,
        seed: int | None,
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
        return DecodeOptions(max_new_tokens, stop, float(temperature), float(top_p), top_k, seed)

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
        chunks = split_into_chunks(documents, self.config.chunk_tokens, self._separator_ids)
        return _Encoding(chunks, context_tokens, digest(self.model_key, documents), None)

    def _prepare(
        self, context: Context, question: str, options: DecodeOptions, progress: bool
    ) -> _Request:
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError("question is empty")
        encoding = self._encoding(context)
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
            self.prompts.prefix_ids,
            self._separator_ids,
        )

    def _eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        generation = getattr(self.model, "generation_config", None)
        for source in (getattr(generation, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source is not None:
                ids.update(int(t) for t in source)
        return ids

    # -- the request ------------------------------------------------------------------------

    def _answer_events(self, request: _Request) -> Iterator[str | Answer]:
        with self._lock:
            started = _start_measuring(self.device)
            stats = AnswerStats(
                context_tokens=request.encoding.context_tokens, chunks_total=len(request.chunks)
            )
            stored, kept = self._encode_and_select(request, stats)
            cache, candidates = self._merge(request.chunks, stored, kept)
            stats.kv_entries_kept = cache.get_seq_length()
            start = len(self.prompts.prefix_ids) + max(len(request.chunks[i]) for i in kept)
            probe = None
            if candidates is not None:
                first, last = self.config.calibration_layers
                probe = AttentionProbe(
                    calibration=CalibrationRule(
                        range(first, last + 1), candidates, self.config.calibration_threshold
                    )
                )
            logits = self._prefill_prompt(cache, request.question_ids, start, probe)
            stats.prompt_tokens = stats.kv_entries_kept + len(request.question_ids)
            yield from self._decode(
                cache,
                logits,
                start + len(request.question_ids),
                probe,
                request.options,
                stats,
                started,
            )

    def _prompt_stream(self, prompt_ids: list[int], options: DecodeOptions) -> AnswerStream:
        if len(prompt_ids) + options.max_new_tokens > self.native_window:
            raise InvalidInputError(
                f"prompt ({len(prompt_ids)} tokens) plus max_new_tokens={options.max_new_tokens} "
                f"exceeds the trained window of {self.native_window}; pass long text as context"
            )
        return AnswerStream(self._prompt_events(prompt_ids, options))

    def _prompt_events(
        self, prompt_ids: list[int], options: DecodeOptions
    ) -> Iterator[str | Answer]:
        with self._lock:
            started = _start_measuring(self.device)
            stats = AnswerStats(prompt_tokens=len(prompt_ids))
            cache = DynamicCache()
            logits = self._prefill_prompt(cache, prompt_ids, 0, None)
            yield from self._decode(cache, logits, len(prompt_ids), None, options, stats, started)

    def _encode_and_select(
        self, request: _Request, stats: AnswerStats
    ) -> tuple[list[_StoredChunk], list[int]]:
        """Prefill every chunk, score it, evict KV inside it; return stored chunks and kept indices."""
        config, chunks = self.config, request.chunks
        keep = config.chunks_to_keep(len(chunks))
        budget = config.kv_budget_per_chunk
        rank = keep < len(chunks)
        evict = budget is not None and any(len(chunk) > budget for chunk in chunks)
        window = (
            min(config.observation_window, len(request.question_ids))
            if evict or (rank and config.chunk_scoring == "attention")
            else None
        )
        stored: list[_StoredChunk] = []
        scores: list[float] = []
        for batch in self._encoded_batches(request.encoding, stats, request.progress):
            probe = AttentionProbe(window=window)
            if rank or evict:
                logits = question_pass(self.model, batch, request.question_ids, probe)
                if rank:
                    scores.extend(self._chunk_scores(batch, logits, probe, request))
                del logits
            for row, index in enumerate(batch.chunk_indices):
                stored.append(
                    self._store_chunk(
                        batch, row, len(chunks[index]), probe.window_scores, index == 0
                    )
                )
            del batch, probe
        if rank:
            kept = eviction.chunks_to_keep(
                scores, keep, lower_is_better=config.chunk_scoring == "nll"
            )
            stats.score_kind = config.chunk_scoring
        else:
            kept = list(range(len(chunks)))
        stats.chunks_kept = len(kept)
        stats.chunks = [
            ChunkInfo(
                documents=tuple(chunk.documents),
                tokens=len(chunk),
                score=scores[i] if rank else None,
                kept=i in kept,
            )
            for i, chunk in enumerate(chunks)
        ]
        return stored, kept

    def _encoded_batches(
        self, encoding: _Encoding, stats: AnswerStats, progress: bool, keep: bool = False
    ) -> Iterator[EncodedBatch]:
        """The context's encoded batches: from a cache when there is one, else prefilled now
        (and kept for reuse when `keep` or when the whole context fits the cache budget)."""
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
        keep = keep or estimate <= self._store.capacity
        holder = (
            self.device if keep and estimate <= self._store.device_budget else torch.device("cpu")
        )
        kept: list[EncodedBatch] = []
        bar = tqdm(total=len(chunks), desc="prefill", unit="chunk", disable=not progress)
        for first in range(0, len(chunks), batch_size):
            indices = list(range(first, min(first + batch_size, len(chunks))))
            rows = [prefix + chunks[i].token_ids for i in indices]
            batch = prefill_rows(self.model, rows, self._pad_id, indices)
            stats.chunks_prefilled += len(indices)
            yield batch
            if keep:
                kept.append(batch.to(holder))
            bar.update(len(indices))
        bar.close()
        if keep:
            self._store.put(
                ContextCache(
                    self.model_key, encoding.context_key, chunks, encoding.context_tokens, kept
                )
            )

    def _chunk_scores(self, batch, logits, probe, request: _Request) -> list[float]:
        if self.config.chunk_scoring == "nll":
            return eviction.question_nll(logits, request.question_ids).tolist()
        prefix = len(self.prompts.prefix_ids)
        starts = [pad + prefix for pad in batch.padding]
        ends = [pad + length for pad, length in zip(batch.padding, batch.lengths)]
        return eviction.attention_mass(probe.window_scores, probe.window, starts, ends).tolist()

    def _store_chunk(
        self, batch, row: int, length: int, window_scores, first: bool
    ) -> _StoredChunk:
        """Copy one row's prefix and (evicted) context KV out of the batch."""
        prefix = len(self.prompts.prefix_ids)
        begin = batch.padding[row]
        context = slice(begin + prefix, begin + prefix + length)
        budget = self.config.kv_budget_per_chunk
        keep_prefix = first or not self.config.dedupe_prefix
        keys, values, offsets, prefix_keys, prefix_values = [], [], [], [], []
        for layer, (batch_keys, batch_values) in enumerate(zip(batch.keys, batch.values)):
            layer_keys, layer_values = batch_keys[row], batch_values[row]
            heads = layer_keys.shape[0]
            if budget is not None and length > budget:
                pooled = eviction.pooled_scores(
                    window_scores[layer][row, :, context], self.config.pooling_kernel
                )
                picked = eviction.top_entries(pooled, budget)
                keys.append(eviction.gather_entries(layer_keys[:, context], picked))
                values.append(eviction.gather_entries(layer_values[:, context], picked))
                offsets.append(picked)
            else:
                keys.append(layer_keys[:, context].clone())
                values.append(layer_values[:, context].clone())
                offsets.append(torch.arange(length, device=layer_keys.device).expand(heads, -1))
            if keep_prefix:
                prefix_keys.append(layer_keys[:, begin : begin + prefix].clone())
                prefix_values.append(layer_values[:, begin : begin + prefix].clone())
        return _StoredChunk(
            keys,
            values,
            offsets,
            prefix_keys if keep_prefix else None,
            prefix_values if keep_prefix else None,
        )

    def _merge(
        self, chunks: list[Chunk], stored: list[_StoredChunk], kept: list[int]
    ) -> tuple[DynamicCache, dict[int, torch.Tensor] | None]:
        """Concatenate the kept chunks' KV (one prefix when deduplicated) into one cache."""
        config = self.config
        calibrate = config.calibration_layers is not None
        merged_keys, merged_values = [], []
        candidates: dict[int, torch.Tensor] = {}
        for layer in range(len(stored[0].keys)):
            key_parts, value_parts, candidate_parts = [], [], []
            for position, index in enumerate(kept):
                piece = stored[index]
                owner = stored[0] if config.dedupe_prefix else piece
                if position == 0 or not config.dedupe_prefix:
                    key_parts.append(owner.prefix_keys[layer])
                    value_parts.append(owner.prefix_values[layer])
                    if calibrate:
                        heads, size = owner.prefix_keys[layer].shape[:2]
                        candidate_parts.append(
                            torch.zeros((heads, size), dtype=torch.bool, device=self.device)
                        )
                key_parts.append(piece.keys[layer])
                value_parts.append(piece.values[layer])
                if calibrate:
                    candidate_parts.append(self._region(piece.offsets[layer], len(chunks[index])))
            merged_keys.append(torch.cat(key_parts, dim=1)[None])
            merged_values.append(torch.cat(value_parts, dim=1)[None])
            if calibrate:
                candidates[layer] = torch.cat(candidate_parts, dim=1)[None]
        return cache_from_tensors(merged_keys, merged_values), (candidates if calibrate else None)

    def _region(self, offsets: torch.Tensor, length: int) -> torch.Tensor:
        """Which kept entries (by offset in their chunk) lie in the calibration region."""
        size = self.config.calibration_region_tokens
        sink, recent = offsets < size, offsets >= length - size
        return {
            "sink": sink,
            "recent": recent,
            "middle": ~(sink | recent),
            "all": torch.ones_like(sink),
        }[self.config.calibration_region]

    @torch.inference_mode()
    def _prefill_prompt(
        self, cache: DynamicCache, token_ids: list[int], start: int, probe: AttentionProbe | None
    ) -> torch.Tensor:
        """Run `token_ids` at positions `start...` on top of `cache`; return the last logits."""
        input_ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(token_ids), device=self.device)[None]
        with active_probe(probe):
            output = self.model(
                input_ids=input_ids,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return output.logits[0, -1]

    def _decode(
        self,
        cache: DynamicCache,
        logits: torch.Tensor,
        next_position: int,
        probe: AttentionProbe | None,
        options: DecodeOptions,
        stats: AnswerStats,
        started: float,
    ) -> Iterator[str | Answer]:
        prefilled = time.perf_counter()
        stats.prefill_seconds = prefilled - started
        sampler = TokenSampler(
            options.temperature, options.top_p, options.top_k, options.seed, self.device
        )
        deltas = TextDeltas(self.tokenizer, options.stop)
        finish = "stop"
        steps = decode_tokens(
            self.model,
            cache,
            logits,
            next_position,
            sampler,
            self._eos_ids,
            options.max_new_tokens,
            probe,
        )
        for token in steps:
            delta = deltas.push(token)
            if delta:
                yield delta
            if deltas.stopped:
                steps.close()
                break
        else:
            if len(deltas.token_ids) == options.max_new_tokens:
                finish = "length"
        tail = deltas.flush()
        if tail:
            yield tail
        stats.new_tokens = len(deltas.token_ids)
        stats.decode_seconds = time.perf_counter() - prefilled
        stats.peak_memory_bytes = _peak_memory(self.device)
        yield Answer(deltas.emitted, deltas.token_ids, finish, stats)


def _drain(stream: AnswerStream) -> Answer:
    for _ in stream:
        pass
    assert stream.answer is not None
    return stream.answer


def _start_measuring(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return time.perf_counter()


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return 0


def _host_memory() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
