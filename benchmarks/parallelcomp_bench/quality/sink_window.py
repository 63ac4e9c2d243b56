"""StreamingLLM-style baseline (`sink-window`): attention sinks plus a recent window of the KV
cache, re-rotated to positions inside the trained window.

The prompt's first `sink_tokens` tokens stay in the cache; of the rest, only the most recent
entries that fit are kept, so that the cache, the question block and the answer together never
exceed the trained window. Positions are positions in the cache (StreamingLLM's rule): when the
oldest non-sink entries are dropped, the kept window's keys are rotated back by the number of
dropped entries, with cos/sin from the model's own rotary embedding.

How it differs from StreamingLLM (Xiao et al., arXiv 2309.17453):

- The prompt is prefilled in blocks of `block_tokens`, not token by token. Before a block, just
  enough of the oldest entries are dropped for the block to fit; a block's queries see the cache
  plus the earlier tokens of their block, so a query's window varies between the cache limit
  minus a block and the cache limit instead of being fixed.
- StreamingLLM caches keys before RoPE and rotates them at attention time; here transformers'
  cache holds rotated keys and the kept window is re-rotated at each eviction. The two agree
  exactly in real arithmetic; in bfloat16 each re-rotation rounds the keys once more.
- Room for the question block and `max_new_tokens` is reserved up front, so nothing is evicted
  while the question is read or the answer decoded.
- The sinks are the first four tokens of the prompt, as in the paper; the rest of the chat
  template's prefix is evicted like context.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from parallelcomp_llm import InvalidInputError, ParallelCompEngine
from parallelcomp_llm.device import start_measuring
from parallelcomp_llm.kvcache import cache_from_tensors, tensors_of

from .baselines import ItemPrompt, decode_greedily, extend_cache
from .device_costs import freeing_memory_on_failure, seconds_since
from .items import Item, MethodOutput


def shift_keys(keys: torch.Tensor, shift: int, rotary: torch.nn.Module) -> torch.Tensor:
    """Keys (batch, kv_heads, tokens, dim) that RoPE encoded at positions p, re-encoded at
    p - `shift`: rotated by the angle of -`shift`, in float32.

    `rotary` is the model's rotary embedding; its cos/sin carry the rope type's
    `attention_scaling`, which the cached keys already hold once, so it is divided out here.
    """
    position = torch.tensor([[shift]], device=keys.device)
    cos, sin = rotary(torch.empty(0, device=keys.device), position)
    cos, sin = (part[:, None] / rotary.attention_scaling for part in (cos, sin))
    encoded = keys.float()
    half = encoded.shape[-1] // 2
    rotated_half = torch.cat((-encoded[..., half:], encoded[..., :half]), dim=-1)
    return (encoded * cos - rotated_half * sin).to(keys.dtype)


def evict_oldest(
    cache: DynamicCache, sink_tokens: int, drop: int, rotary: torch.nn.Module
) -> DynamicCache:
    """A cache without the `drop` entries after the first `sink_tokens`; the entries after them
    move `drop` positions down, their keys re-rotated to match."""
    keys, values = tensors_of(cache)
    kept_keys = [
        torch.cat(
            (
                layer[..., :sink_tokens, :],
                shift_keys(layer[..., sink_tokens + drop :, :], drop, rotary),
            ),
            dim=-2,
        )
        for layer in keys
    ]
    kept_values = [
        torch.cat((layer[..., :sink_tokens, :], layer[..., sink_tokens + drop :, :]), dim=-2)
        for layer in values
    ]
    return cache_from_tensors(kept_keys, kept_values)


class SinkWindowMethod:
    """Attention sinks plus a recent window (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        engine: ParallelCompEngine,
        *,
        sink_tokens: int = 4,
        block_tokens: int = 1024,
    ) -> None:
        self.name = name
        self.engine = engine
        self.sink_tokens = sink_tokens
        self.block_tokens = block_tokens

    def cache_limit(self, prompt: ItemPrompt, max_new_tokens: int) -> int:
        """Most entries the cache may hold before the question block."""
        return self.engine.native_window - len(prompt.question_ids) - max_new_tokens

    def answer(self, item: Item) -> MethodOutput:
        prompt = ItemPrompt.of(self.engine, item)
        limit = self.cache_limit(prompt, item.max_new_tokens)
        if limit <= self.sink_tokens:
            raise InvalidInputError(
                f"the question block ({len(prompt.question_ids)} tokens) and max_new_tokens="
                f"{item.max_new_tokens} leave no room for a window in the trained window of "
                f"{self.engine.native_window}"
            )
        with freeing_memory_on_failure(self.engine.device), torch.inference_mode():
            return self.answer_prompt(prompt, limit, item.max_new_tokens)

    def answer_prompt(self, prompt: ItemPrompt, limit: int, max_new_tokens: int) -> MethodOutput:
        """Stream the prompt through a cache of at most `limit` entries, then decode."""
        engine = self.engine
        rotary = engine.model.model.rotary_emb
        started = start_measuring(engine.device)
        streamed = prompt.prefix_ids + prompt.context_ids
        block = min(self.block_tokens, limit - self.sink_tokens)
        cache = DynamicCache()
        for first in range(0, len(streamed), block):
            block_ids = streamed[first : first + block]
            overflow = cache.get_seq_length() + len(block_ids) - limit
            if overflow > 0:
                cache = evict_oldest(cache, self.sink_tokens, overflow, rotary)
            extend_cache(engine, cache, block_ids)
        last_logits = extend_cache(engine, cache, prompt.question_ids)
        return decode_greedily(
            engine,
            cache,
            last_logits,
            max_new_tokens,
            prompt_tokens=len(prompt.token_ids),
            prefill_seconds=seconds_since(started, engine.device),
        )
