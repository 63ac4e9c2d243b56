"""Validated settings of the ParallelComp engine (`ParallelCompConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .chunking import MIN_CHUNK_TOKENS
from .errors import CheckedModel
from .stages.base import Stage
from .stages.budget import EvenBudget, KeepChunks, KVBudget, RelativeShare
from .stages.calibration import BiasCalibrator, BiasThreshold, LayerRange, Region, RegionTokens
from .stages.scoring import SCORERS, Head
from .stages.selection import SELECTORS, ObservationWindow, PoolingKernel, SnapKVSelector

_CHUNK_ROOM_FRACTIONS = {"reread": 0.0625, "merge": 0.25}
"""The default `chunk_room_fraction` of each way of reading the kept chunks (`kept_chunks`)."""


def _stage_default(stage: type[Stage], parameter: str) -> object:
    """The default of a stage's parameter: the one place it is written."""
    return stage.model_fields[parameter].default


class ParallelCompConfig(CheckedModel):
    """Settings of a `ParallelCompEngine`, and of the stages it builds from them
    (`parallelcomp_llm.stages`).

    Sizes are in tokens of the model's own tokenizer. Settings left as ``None`` are derived from
    the model when the engine is built (see `ParallelCompEngine.config`, which holds the resolved
    values). Out-of-range values raise `InvalidConfigError`. The bounds of stage parameters are
    those of the stage classes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_tokens: int | None = Field(
        None,
        ge=MIN_CHUNK_TOKENS,
        description="Context tokens per chunk. Default: a context that fits the room the trained "
        "window leaves beside the prompt template, `question_reserve_tokens` and "
        "`answer_reserve_tokens` is one chunk; a longer one is split into chunks of "
        "`chunk_room_fraction` of that room (at least 16 tokens).",
    )
    chunk_room_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Share of that room a chunk fills when `chunk_tokens` is None and the context "
        "does not fit in one chunk. Default: a sixteenth (478 tokens for SmolLM2's 8K) when the "
        "kept chunks are read again, so that they can come from several places of the context "
        "(best on RULER at 16K and 128K: see benchmarks/results/chunk_size/); a quarter when "
        "they are merged, where the default model finds needles far more often than in chunks "
        "that fill the room (see benchmarks/results/tuning/).",
    )
    question_reserve_tokens: int = Field(
        256,
        ge=1,
        description="Longest question (with its template) a chunk leaves room for; also the "
        "longest system prompt, and question, that a long prompt or chat is cut into.",
    )
    answer_reserve_tokens: int = Field(
        256, ge=1, description="Room left for the answer; also the default `max_new_tokens`."
    )
    chunk_batch_size: int | None = Field(
        None, ge=1, description="Chunks per forward pass. Default: chosen from free memory."
    )
    keep_chunks: KeepChunks = Field(
        _stage_default(EvenBudget, "keep_chunks"),
        description="Chunks kept after scoring: a count (int >= 1) or a fraction of all chunks "
        "(float in (0, 1]), whether they are read again or merged (`kept_chunks`).",
    )
    keep_relative_share: RelativeShare = Field(
        _stage_default(EvenBudget, "keep_relative_share"),
        description="When set (0 to 1), a kept chunk after the best needs at least this fraction "
        "of the best chunk's relevance share (the attribution `AnswerStats` reports), so that "
        "fewer than `keep_chunks` may survive: one when the question's evidence stands out in "
        "one chunk, more when it is spread. None always keeps `keep_chunks`. When fewer "
        "survive, merged KV keeps each its share of `kv_budget` for `keep_chunks` chunks.",
    )
    chunk_scoring: str = Field(
        "nll",
        description="The registered `ChunkScorer` that ranks chunks: 'nll' (the question's "
        "likelihood given the chunk), 'attention' (the question's attention mass on it) or "
        "'key_match' (the queries of the question read once alone, matched against each "
        "chunk's keys: no question pass after the chunks) or 'heads' (the question's attention "
        "on it in the retrieval heads `scoring_heads`: the question pass, and the chunk prefill "
        "when no chunk's KV is kept, stop after the deepest of them).",
    )
    scoring_heads: tuple[Head, ...] | None = Field(
        None,
        min_length=1,
        description="The (layer, KV head) pairs, counted from 0, that `chunk_scoring='heads'` "
        "reads; required by it and read by no other scorer. Which heads retrieve depends on the "
        "model: `python -m parallelcomp_bench.quality.scoring_probe` ranks them.",
    )
    kv_selection: str = Field(
        "snapkv",
        description="The registered `KVSelector` that picks the KV entries kept inside each "
        "chunk: 'snapkv' (attention of the last question tokens, max-pooled).",
    )
    kv_budget: KVBudget = Field(
        _stage_default(EvenBudget, "kv_budget"),
        description="KV entries per layer and KV head that the answer is decoded over, shared "
        "evenly by the kept chunks, each evicted to its share (SnapKV-style): 1024 a chunk when "
        "3 are kept, all 3072 when the context is one chunk. None keeps every entry of the kept "
        "chunks. Chosen from RULER runs: see benchmarks/results/tuning/.",
    )
    observation_window: ObservationWindow = Field(
        _stage_default(SnapKVSelector, "observation_window"),
        description="Last question tokens whose attention scores the KV entries (all of them when "
        "the question block is shorter). 32 rather than 8, so that the question's own words vote, "
        "not only the chat template's closing tokens: see benchmarks/results/tuning/.",
    )
    pooling_kernel: PoolingKernel = Field(
        _stage_default(SnapKVSelector, "pooling_kernel"),
        description="Width of the max-pooling over token scores (odd).",
    )
    calibration_layers: LayerRange | None = Field(
        None,
        description="Inclusive layer range [first, last] where attention-bias tokens are "
        "evicted; None switches calibration off.",
    )
    calibration_region: Region = Field(
        _stage_default(BiasCalibrator, "region"),
        description="Where in each chunk bias tokens may be evicted.",
    )
    calibration_region_tokens: RegionTokens = Field(
        _stage_default(BiasCalibrator, "region_tokens"),
        description="Size of the 'sink' and 'recent' regions of a chunk.",
    )
    calibration_threshold: BiasThreshold = Field(
        _stage_default(BiasCalibrator, "threshold"),
        description="A KV entry is a bias token when the question's mean attention to it exceeds "
        "this multiple of the uniform share (1 / number of entries).",
    )
    kept_chunks: Literal["merge", "reread"] | None = Field(
        None,
        description="How the answer reads the kept chunks. Default: 'reread', or 'merge' when "
        "calibration is on (`calibration_layers`, or a calibrator given to the engine). 'merge': "
        "their KV, each chunk's "
        "positions from 0 and evicted to its share of `kv_budget`, concatenated (the paper's "
        "ParallelComp). 'reread': when the kept chunks fit the trained window with the template, "
        "the question and `max_new_tokens`, they are read again as one prompt in document "
        "order, with plain attention and no eviction; otherwise merged. 'reread' cannot be "
        "combined with calibration, which corrects merged KV.",
    )
    dedupe_prefix: bool = Field(
        True,
        description="Keep the prompt prefix (BOS, system prompt, user header) of one kept chunk "
        "only, so that the merged KV has one attention sink.",
    )
    max_context_tokens: int = Field(
        262_144, ge=1, description="Hard limit on context tokens; longer input is refused."
    )
    context_cache_device_fraction: float = Field(
        0.1,
        ge=0.0,
        le=0.9,
        description="Share of the GPU's memory that encoded contexts may keep for reuse "
        "(ignored on CPU).",
    )
    context_cache_host_fraction: float = Field(
        0.1,
        ge=0.0,
        le=0.9,
        description="Share of host RAM that encoded contexts may keep for reuse; both shares 0 "
        "switch automatic reuse off.",
    )
    max_waiting_requests: int = Field(
        64,
        ge=0,
        description="Requests that may wait while another uses the model; one more raises "
        "EngineBusyError.",
    )
    max_batch_requests: int = Field(
        8,
        ge=1,
        le=1024,
        description="Most questions answered together in one batch: when the model becomes free, "
        "the oldest waiting request runs with the requests waiting behind it over the same "
        "context (same documents or ContextCache), up to this many questions (each question of "
        "a generate_batch counts; a longer generate_batch runs as consecutive batches of this "
        "many). 1 runs every call alone.",
    )
    request_timeout_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Longest a request may wait and run, in seconds; then RequestTimeoutError.",
    )
    max_new_tokens_limit: int | None = Field(
        None, ge=1, description="Largest `max_new_tokens` a caller may ask for."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto': bfloat16 on CUDA, float32 on CPU."
    )
    device: str = Field(
        "auto",
        description="'auto', 'cpu', 'cuda' or 'cuda:N'. Left 'auto' when the `device_map` "
        "loading option places the model (see `LoadOptions`).",
    )
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2"] = Field(
        "auto",
        description="'auto': flash_attention_2 on CUDA when flash-attn is installed, else sdpa.",
    )
    decode_step: Literal["auto", "dynamic", "static", "cuda_graph", "compiled"] = Field(
        "auto",
        description="How answers decode. 'cuda_graph': over a static KV cache, each step "
        "replayed from a CUDA graph captured once per shape bucket; 'compiled': the same with "
        "the model's forward compiled by torch.compile first (faster steps; the first request "
        "of each shape bucket waits for the compile, 11-18 s for an 8B model on an H200; "
        "on CPU, compiled without graphs); 'static': the static cache without graphs; "
        "'dynamic': a cache that grows by one entry a step. 'auto': cuda_graph on CUDA, dynamic "
        "elsewhere and whenever calibration is on or the model has sliding-window layers.",
    )
    use_chat_template: bool | None = Field(
        None, description="Wrap prompts in the tokenizer's chat template. None: when it has one."
    )
    document_separator: str = Field(
        "\n\n", description="Text put between documents packed into one chunk."
    )

    def with_reading_resolved(self, calibrated: bool) -> ParallelCompConfig:
        """This config with `kept_chunks` and `chunk_room_fraction` filled in where left as None,
        for an engine that calibrates merged KV (`calibrated`) or not."""
        kept = self.kept_chunks or ("merge" if calibrated else "reread")
        fraction = self.chunk_room_fraction or _CHUNK_ROOM_FRACTIONS[kept]
        return self.model_copy(update={"kept_chunks": kept, "chunk_room_fraction": fraction})

    @field_validator("chunk_scoring")
    @classmethod
    def _registered_scorer(cls, name: str) -> str:
        SCORERS.get(name)
        return name

    @model_validator(mode="after")
    def _heads_for_their_scorer(self) -> ParallelCompConfig:
        if self.chunk_scoring == "heads" and self.scoring_heads is None:
            raise ValueError(
                "chunk_scoring='heads' needs scoring_heads, the (layer, KV head) pairs it reads"
            )
        if self.chunk_scoring != "heads" and self.scoring_heads is not None:
            raise ValueError("scoring_heads is read only by chunk_scoring='heads'")
        return self

    @field_validator("kv_selection")
    @classmethod
    def _registered_selector(cls, name: str) -> str:
        SELECTORS.get(name)
        return name

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return device
