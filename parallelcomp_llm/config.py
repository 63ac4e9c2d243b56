"""Validated settings of the ParallelComp engine (`ParallelCompConfig`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidConfigError


class ParallelCompConfig(BaseModel):
    """Settings of a `ParallelCompEngine`.

    Sizes are in tokens of the model's own tokenizer. Settings left as ``None`` are derived from
    the model when the engine is built (see `ParallelCompEngine.config`, which holds the resolved
    values). Out-of-range values raise `InvalidConfigError`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_tokens: int | None = Field(
        None,
        ge=16,
        description="Context tokens per chunk. Default: a context that fits the room the trained "
        "window leaves beside the prompt template, `question_reserve_tokens` and "
        "`answer_reserve_tokens` is one chunk; a longer one is split into chunks of "
        "`chunk_room_fraction` of that room (at least 16 tokens).",
    )
    chunk_room_fraction: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="Share of that room a chunk fills when `chunk_tokens` is None and the context "
        "does not fit in one chunk. A quarter, not all of it, because the default model finds "
        "needles far more often in chunks of a quarter of its window (1,914 tokens for SmolLM2's "
        "8K): see benchmarks/results/tuning/.",
    )
    question_reserve_tokens: int = Field(
        256, ge=1, description="Longest question (with its template) a chunk leaves room for."
    )
    answer_reserve_tokens: int = Field(
        256, ge=1, description="Room left for the answer; also the default `max_new_tokens`."
    )
    chunk_batch_size: int | None = Field(
        None, ge=1, description="Chunks per forward pass. Default: chosen from free memory."
    )
    keep_chunks: int | float = Field(
        3,
        description="Chunks kept after scoring: a count (int >= 1) or a fraction of all chunks "
        "(float in (0, 1]).",
    )
    chunk_scoring: Literal["nll", "attention"] = Field(
        "nll",
        description="How chunks are ranked: the question's mean negative log-likelihood given "
        "the chunk ('nll'), or the question's attention mass on the chunk ('attention').",
    )
    kv_budget: int | None = Field(
        3072,
        ge=1,
        description="KV entries per layer and KV head that the answer is decoded over, shared "
        "evenly by the kept chunks, each evicted to its share (SnapKV-style): 1024 a chunk when "
        "3 are kept, all 3072 when the context is one chunk. None keeps every entry of the kept "
        "chunks. Chosen from RULER runs: see benchmarks/results/tuning/.",
    )
    observation_window: int = Field(
        32,
        ge=1,
        description="Last question tokens whose attention scores the KV entries (all of them when "
        "the question block is shorter). 32 rather than 8, so that the question's own words vote, "
        "not only the chat template's closing tokens: see benchmarks/results/tuning/.",
    )
    pooling_kernel: int = Field(
        15, ge=1, description="Width of the max-pooling over token scores (odd)."
    )
    calibration_layers: tuple[int, int] | None = Field(
        None,
        description="Inclusive layer range [first, last] where attention-bias tokens are "
        "evicted; None switches calibration off.",
    )
    calibration_region: Literal["sink", "recent", "middle", "all"] = Field(
        "all", description="Where in each chunk bias tokens may be evicted."
    )
    calibration_region_tokens: int = Field(
        100, ge=1, description="Size of the 'sink' and 'recent' regions of a chunk."
    )
    calibration_threshold: float = Field(
        10.0,
        gt=1.0,
        description="A KV entry is a bias token when the question's mean attention to it exceeds "
        "this multiple of the uniform share (1 / number of entries).",
    )
    dedupe_prefix: bool = Field(
        True,
        description="Keep the prompt prefix (BOS, system prompt, user header) of the first chunk "
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
        "a generate_batch counts; a generate_batch is never split). 1 runs every call alone.",
    )
    request_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Longest a request may wait and run, in seconds; then RequestTimeoutError.",
    )
    max_new_tokens_limit: int | None = Field(
        None, ge=1, description="Largest `max_new_tokens` a caller may ask for."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto': bfloat16 on CUDA, float32 on CPU."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2"] = Field(
        "auto",
        description="'auto': flash_attention_2 on CUDA when flash-attn is installed, else sdpa.",
    )
    use_chat_template: bool | None = Field(
        None, description="Wrap prompts in the tokenizer's chat template. None: when it has one."
    )
    document_separator: str = Field(
        "\n\n", description="Text put between documents packed into one chunk."
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise InvalidConfigError(f"invalid ParallelCompConfig: {error}") from None

    @model_validator(mode="after")
    def _check_relations(self) -> ParallelCompConfig:
        keep = self.keep_chunks
        if isinstance(keep, bool) or (isinstance(keep, int) and keep < 1):
            raise ValueError("keep_chunks must be an int >= 1 or a float in (0, 1]")
        if isinstance(keep, float) and not 0.0 < keep <= 1.0:
            raise ValueError("keep_chunks as a fraction must be in (0, 1]")
        if self.pooling_kernel % 2 == 0:
            raise ValueError("pooling_kernel must be odd")
        if self.calibration_layers is not None:
            first, last = self.calibration_layers
            if first < 0 or last < first:
                raise ValueError("calibration_layers must be (first, last) with 0 <= first <= last")
        if self.device != "auto" and not (
            self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")
        ):
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return self

    def chunks_to_keep(self, total: int) -> int:
        """How many of `total` chunks survive chunk eviction."""
        if isinstance(self.keep_chunks, float):
            return max(1, min(total, round(self.keep_chunks * total)))
        return min(total, self.keep_chunks)

    def chunk_kv_budget(self, total: int) -> int | None:
        """KV entries each kept chunk keeps (per layer and KV head) when the context has `total`
        chunks: its share of `kv_budget`; None keeps them all."""
        if self.kv_budget is None:
            return None
        return max(1, self.kv_budget // self.chunks_to_keep(total))
