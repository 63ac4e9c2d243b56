"""Per-call keyword arguments of `ParallelCompLLM`, checked and merged over its defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from parallelcomp_llm import InvalidInputError

DECODING_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
"""Decoding settings that are both `ParallelCompLLM` fields and engine keyword arguments."""

_ACCEPTED = "context, max_tokens (or max_new_tokens), temperature, top_p, top_k, seed, stop"


def decoding_options(defaults: Mapping[str, Any], call: Mapping[str, Any]) -> dict[str, Any]:
    """Engine keyword arguments: the LLM's `defaults` overridden by one call's arguments.

    `max_tokens`, LlamaIndex's usual name, is accepted for the engine's `max_new_tokens`. Unknown
    names raise `InvalidInputError` rather than being dropped silently.
    """
    unknown = sorted(set(call) - {*DECODING_FIELDS, "max_tokens"})
    if unknown:
        raise InvalidInputError(f"unknown keyword arguments {unknown}; accepted: {_ACCEPTED}")
    if "max_tokens" in call and "max_new_tokens" in call:
        raise InvalidInputError("give max_tokens or max_new_tokens, not both")
    options = {name: defaults[name] for name in DECODING_FIELDS} | dict(call)
    if "max_tokens" in options:
        options["max_new_tokens"] = options.pop("max_tokens")
    return options
