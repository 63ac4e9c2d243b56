"""Constrained decoding with llguidance: a request's `ResponseFormat` compiled for the model's
tokenizer, and per answer a `TokenConstraint` that masks the logits to the tokens its grammar
allows next.

llguidance (the grammar engine of vLLM's and SGLang's `guidance` backend and of llama.cpp) is one
wheel with no dependencies, computes a mask in tens of microseconds, and takes JSON schemas, Lark
and regular expressions. JSON is compiled with at most one space around `:` and `,` and no other
whitespace, and an object takes only its listed properties unless its schema says
`additionalProperties` (as in OpenAI's strict mode), so that a model cannot wander in whitespace
or in made-up keys before the value ends.
"""

from __future__ import annotations

import functools
import json
import threading

import llguidance
import llguidance.hf
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .errors import InvalidInputError
from .response_format import ResponseFormat

JSON_OPTIONS = {"whitespace_pattern": r" ?"}
"""How JSON answers may space their items: at most one space around a separator."""
_COMPILED_GRAMMARS = 64
"""Grammars kept compiled per engine (a request's format is compiled once, then looked up)."""


class TokenConstraint:
    """The grammar state of one answer: which tokens may come next, and whether it is complete."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size

    def masked(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (vocab,) with every token the grammar forbids next at -inf (the end token is
        allowed once the value is complete); columns past the tokenizer's vocabulary are
        forbidden too. Bit `i` of mask byte `b` allows token `8 * b + i`; numpy unpacks the bits
        (torch's bit shifts were far slower on the CPU)."""
        packed = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(packed, count=logits.shape[-1], bitorder="little")
        allowed[self._vocab_size :] = 0
        forbidden = torch.from_numpy(allowed == 0).to(logits.device)
        return logits.masked_fill(forbidden, float("-inf"))

    def accept(self, token: int) -> None:
        """Advance over the chosen `token` (one the mask allowed)."""
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self._matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """Whether the answer is complete and nothing can follow (then decoding stops)."""
        return self._matcher.is_stopped()


class Grammars:
    """Compiles response formats for one tokenizer, checks them before any model work, and hands
    out a fresh `TokenConstraint` per answer. Once an answer's value is complete, its grammar
    allows the engine's end tokens (`end_ids`), and only them. The llguidance view of the
    tokenizer is built on first use (about half a second for a 49K vocabulary)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, end_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self._end_ids = sorted(end_ids)
        self._lock = threading.Lock()
        self._compiled = functools.lru_cache(maxsize=_COMPILED_GRAMMARS)(self._compile)

    @functools.cached_property
    def _ll_tokenizer(self) -> llguidance.LLTokenizer:
        if not isinstance(self._tokenizer, PreTrainedTokenizerFast):
            raise InvalidInputError(
                "response_format needs a fast (Rust) tokenizer; this model's is "
                f"{type(self._tokenizer).__name__}"
            )
        return llguidance.hf.from_tokenizer(self._tokenizer, eos_token=self._end_ids or None)

    def check(self, response_format: ResponseFormat | None) -> None:
        """`InvalidInputError` naming the problem when the format does not compile."""
        if response_format is not None:
            self._grammar(response_format)

    def constraint(self, response_format: ResponseFormat | None) -> TokenConstraint | None:
        """A new constraint at the start of an answer in `response_format` (None: none)."""
        if response_format is None:
            return None
        grammar = self._grammar(response_format)
        tokenizer = self._ll_tokenizer
        return TokenConstraint(llguidance.LLMatcher(tokenizer, grammar), tokenizer.vocab_size)

    def _grammar(self, response_format: ResponseFormat) -> str:
        if response_format.lark is not None:
            key = ("lark", response_format.lark)
        else:
            key = ("json", json.dumps(response_format.json_schema))
        with self._lock:
            return self._compiled(key)

    def _compile(self, key: tuple[str, str]) -> str:
        kind, text = key
        if kind == "json":
            schema = closed_objects(json.loads(text))
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        else:
            grammar = llguidance.LLMatcher.grammar_from_lark(text)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self._ll_tokenizer
        )
        if failed:
            what = "JSON schema" if kind == "json" else "Lark grammar"
            raise InvalidInputError(
                f"the response_format's {what} does not compile: {'; '.join(messages)}"
            )
        return grammar


def lark_json(schema: dict) -> str:
    """`schema` as a JSON value inside a Lark grammar (llguidance's `%json`), compiled as JSON
    answers are (`closed_objects`, `JSON_OPTIONS`)."""
    return "%json " + json.dumps(closed_objects(schema) | {"x-guidance": JSON_OPTIONS})


def closed_objects(schema: object) -> object:
    """`schema` with `"additionalProperties": false` in every object schema that lists
    `properties` and says nothing of other keys."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: closed_objects(value) for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        closed["additionalProperties"] = False
    return closed
