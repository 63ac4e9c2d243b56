"""Plain-transformers baselines over the engine's prompt: the whole prompt (`full`), the prompt
with the middle of its context cut out (`truncate-middle`) or with RoPE scaled to its length
(`rope-*`); and what every baseline shares: the prompt, cache feeding and greedy decoding."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache

from parallelcomp_llm import DecodeSettings, InvalidInputError, ParallelCompEngine
from parallelcomp_llm.decode_step import DynamicStep
from parallelcomp_llm.decoding import DecodeRow, TokenSampler, decode_rows
from parallelcomp_llm.device import peak_memory, start_measuring
from parallelcomp_llm.kvcache import run_on_cache

from .device_costs import freeing_memory_on_failure, seconds_since
from .items import Item, MethodOutput
from .rope_scaling import RopeScaling


@dataclass(frozen=True)
class ItemPrompt:
    """An item's prompt as the engine lays it out: `[prefix][context][question block]`."""

    prefix_ids: list[int]
    context_ids: list[int]
    question_ids: list[int]

    @classmethod
    def of(cls, engine: ParallelCompEngine, item: Item) -> ItemPrompt:
        """The prompt `engine` puts around `item`'s context and question."""
        prompts = engine.prompts
        return cls(
            list(prompts.prefix_ids),
            prompts.encode(item.context),
            prompts.question_ids(item.question),
        )

    @property
    def token_ids(self) -> list[int]:
        """The whole prompt."""
        return self.prefix_ids + self.context_ids + self.question_ids

    def fitted(self, budget: int) -> ItemPrompt:
        """This prompt in at most `budget` tokens, the middle of the context cut out if needed."""
        room = budget - len(self.prefix_ids) - len(self.question_ids)
        if room < 0:
            raise InvalidInputError(
                f"the prompt template and question ({len(self.prefix_ids) + len(self.question_ids)}"
                f" tokens) do not fit in {budget} tokens"
            )
        return replace(self, context_ids=truncate_middle(self.context_ids, room))


def truncate_middle(token_ids: list[int], keep: int) -> list[int]:
    """The first and last halves of `keep` tokens of `token_ids` (LongBench's truncation), or all
    of them when they fit."""
    if len(token_ids) <= keep:
        return list(token_ids)
    head = keep // 2
    return token_ids[:head] + token_ids[len(token_ids) - (keep - head) :]


def extend_cache(
    engine: ParallelCompEngine, cache: DynamicCache, token_ids: list[int]
) -> torch.Tensor:
    """Feed `token_ids` at the positions right after the cache's last entry (the cache grows);
    return the logits after the last token (1, vocab)."""
    start = cache.get_seq_length()
    input_ids = torch.tensor([token_ids], dtype=torch.long, device=engine.device)
    positions = torch.arange(start, start + len(token_ids), device=engine.device)[None]
    return run_on_cache(engine.model, input_ids, positions, cache, logits_to_keep=1)[:, -1]


def decode_greedily(
    engine: ParallelCompEngine,
    cache: DynamicCache,
    last_logits: torch.Tensor,
    max_new_tokens: int,
    *,
    prompt_tokens: int,
    prefill_seconds: float,
) -> MethodOutput:
    """Greedy decoding on a prefilled cache, at the positions after its last entry, until EOS or
    `max_new_tokens`; the answer with its costs (peak memory since `start_measuring`)."""
    kv_kept = cache.get_seq_length()
    greedy = TokenSampler(DecodeSettings(), engine.device)
    row = DecodeRow(greedy, max_new_tokens, next_position=kv_kept, end_ids=engine.eos_token_ids)
    # One row: a finished row ends decoding, so padding is never fed.
    step = DynamicStep(engine.model, cache, None, None)
    for _ in decode_rows(step, last_logits, [row], engine.pad_token_id):
        pass
    return MethodOutput(
        text=engine.tokenizer.decode(row.produced, skip_special_tokens=True),
        prompt_tokens=prompt_tokens,
        prefill_seconds=prefill_seconds,
        peak_memory_bytes=peak_memory(engine.device),
        kv_kept=kv_kept,
    )


class FullPromptMethod:
    """The whole prompt in one prefill forward, then greedy decoding (`full`); optionally with the
    middle of the context cut out so that the prompt and the answer fit the trained window
    (`truncate-middle`), or with RoPE scaled by transformers' `rope_type` to the prompt's length
    (`rope-linear`, `rope-ntk`, `rope-yarn`)."""

    def __init__(
        self,
        name: str,
        engine: ParallelCompEngine,
        *,
        truncate: bool = False,
        rope_type: str | None = None,
    ) -> None:
        self.name = name
        self.engine = engine
        self.truncate = truncate
        self.rope = RopeScaling(engine.model, rope_type) if rope_type else None

    def answer(self, item: Item) -> MethodOutput:
        prompt = ItemPrompt.of(self.engine, item)
        if self.truncate:
            prompt = prompt.fitted(self.engine.native_window - item.max_new_tokens)
        token_ids = prompt.token_ids
        scaling = (
            self.rope.scaled_for(len(token_ids) + item.max_new_tokens)
            if self.rope
            else contextlib.nullcontext()
        )
        with freeing_memory_on_failure(self.engine.device), torch.inference_mode(), scaling:
            return self.answer_prompt(token_ids, item.max_new_tokens)

    def answer_prompt(self, token_ids: list[int], max_new_tokens: int) -> MethodOutput:
        """Prefill `token_ids` whole, then decode greedily."""
        started = start_measuring(self.engine.device)
        cache = DynamicCache()
        last_logits = extend_cache(self.engine, cache, token_ids)
        return decode_greedily(
            self.engine,
            cache,
            last_logits,
            max_new_tokens,
            prompt_tokens=len(token_ids),
            prefill_seconds=seconds_since(started, self.engine.device),
        )
