"""`Intake`: every input of a request checked and shaped before any model work.

It tokenizes and chunks a context (or takes the chunks of a `ContextCache`), checks that a
question and the answer fit the trained window after the longest chunk, resolves decoding
settings and deadlines, and cuts a chat or prompt too long for the window into a system prompt,
context and question (`long_prompt`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .admission import Deadline
from .chunking import ChunkPlan
from .config import ParallelCompConfig
from .context_cache import ContextCache, context_key
from .decode_settings import DecodeSettings
from .errors import ContextTooLongError, InvalidInputError
from .grammar import Grammars
from .long_prompt import PromptParts, PromptSplitter
from .prompt import PromptBuilder
from .requests import Encoding, Request, documents_of
from .tools import ToolSet

Context = str | Sequence[str] | ContextCache
"""What a question is asked over: a text, a sequence of documents, or an encoded context."""


class Intake:
    """Checks and shapes the requests of one engine (its prompts, chunk plan and settings)."""

    def __init__(
        self,
        prompts: PromptBuilder,
        chunk_plan: ChunkPlan,
        config: ParallelCompConfig,
        model_key: str,
        native_window: int,
        grammars: Grammars,
    ) -> None:
        self.prompts = prompts
        self.grammars = grammars
        self.chunk_plan = chunk_plan
        self.config = config
        self.model_key = model_key
        self.native_window = native_window
        self.splitter = PromptSplitter(prompts, config.question_reserve_tokens)

    def deadline(self, timeout_s: float | None) -> Deadline:
        return Deadline.within(timeout_s, self.config.request_timeout_s)

    def settings(
        self,
        settings: DecodeSettings | None,
        options: dict[str, Any],
        tools: ToolSet | None = None,
    ) -> DecodeSettings:
        """A call's decoding settings, its `response_format` shaped by `tools`
        (`ToolSet.response_format`) and compiled (`InvalidInputError` when it does not)."""
        config = self.config
        decoding = DecodeSettings.for_call(
            settings, options, config.answer_reserve_tokens, config.max_new_tokens_limit
        )
        if tools is not None:
            shape = tools.response_format(decoding.response_format)
            decoding = decoding.model_copy(update={"response_format": shape})
        self.grammars.check(decoding.response_format)
        return decoding

    def encoding(self, context: Context, system_prompt: str | None = None) -> Encoding:
        """Tokenize and chunk `context` for chunks prefixed with `system_prompt`, or take the
        chunks of a given `ContextCache` (encoded with that system prompt, or with its own when
        `system_prompt` is None)."""
        if isinstance(context, ContextCache):
            context.check_made_for(self.model_key)
            if system_prompt is not None and self.prompts.prefix_with(system_prompt) != list(
                context.prefix_ids
            ):
                raise InvalidInputError(
                    "this context cache was encoded with another system prompt; encode the "
                    "context with engine.encode(..., system_prompt=...) for this one"
                )
            return Encoding(
                context.chunks,
                context.context_tokens,
                context.context_key,
                context,
                context.prefix_ids,
            )
        prefix_ids = self.prompts.prefix_with(system_prompt)
        texts = documents_of(context)
        limit = self.config.max_context_tokens
        self.check_size("context", sum(len(text) for text in texts))
        documents = [self.prompts.encode(d) if d.strip() else [] for d in texts]
        extra_prefix = len(prefix_ids) - len(self.prompts.prefix_ids)
        chunks = self.chunk_plan.split(documents, extra_prefix)
        context_tokens = sum(len(chunk) for chunk in chunks)
        if context_tokens > limit:
            raise ContextTooLongError(
                f"context has {context_tokens} tokens, more than max_context_tokens={limit} "
                "(separators between packed documents count); raise the limit or pass less text"
            )
        return Encoding(
            chunks,
            context_tokens,
            context_key(self.model_key, prefix_ids, chunks),
            None,
            prefix_ids,
        )

    def check_size(self, what: str, characters: int) -> None:
        """`ContextTooLongError` before tokenizing a text of `characters` characters that must
        have more than `max_context_tokens` tokens (no token is longer than the tokenizer's
        longest)."""
        limit, longest = self.config.max_context_tokens, self.prompts.max_token_characters
        if characters > limit * longest:
            raise ContextTooLongError(
                f"{what} has {characters} characters, so more than max_context_tokens={limit} "
                f"tokens (no token is longer than {longest} characters); raise the limit or pass "
                "less text"
            )

    def tokens_of(self, text: str) -> list[int]:
        """Token ids of caller text no longer than the longest context (`check_size`)."""
        if isinstance(text, str):
            self.check_size("text", len(text))
        return self.prompts.encode(text)

    def request(
        self,
        encoding: Encoding,
        question: str,
        settings: DecodeSettings,
        deadline: Deadline,
        progress: bool,
    ) -> Request:
        """One question over `encoding`, checked to fit the window after its longest chunk."""
        if not isinstance(question, str):
            raise InvalidInputError(f"question must be a string, got {type(question).__name__}")
        if not question.strip():
            raise InvalidInputError("question is empty")
        question_ids = self.prompts.question_ids(question)
        longest = max(len(chunk) for chunk in encoding.chunks)
        prefix = len(encoding.prefix_ids)
        needed = prefix + longest + len(question_ids) + settings.max_new_tokens
        if needed > self.native_window:
            raise InvalidInputError(
                f"the question ({len(question_ids)} tokens with its template) and max_new_tokens="
                f"{settings.max_new_tokens} do not fit after a chunk of {longest} tokens and a "
                f"prefix of {prefix} in the trained window of {self.native_window}; shorten the "
                "question or the system prompt, lower max_new_tokens, or raise "
                "question_reserve_tokens / answer_reserve_tokens"
            )
        return Request(encoding, question_ids, settings, deadline, progress)

    def question_with_tools(self, question: str, tools: ToolSet | None) -> str:
        """The question of a chat answered with ParallelComp, after the offered tools' text
        (`ToolSet.instructions`); `InvalidInputError` when both do not fit
        `question_reserve_tokens`."""
        if tools is None or not tools.offered:
            return question
        asked = tools.instructions() + "\n\n" + question
        needed, reserve = len(self.prompts.question_ids(asked)), self.config.question_reserve_tokens
        if needed > reserve:
            raise InvalidInputError(
                f"the tools' descriptions and the question take {needed} tokens; a chat answered "
                f"with ParallelComp has question_reserve_tokens={reserve} for them: offer fewer "
                "or shorter tools, or raise question_reserve_tokens"
            )
        return asked

    def fits_window(self, prompt_ids: list[int], settings: DecodeSettings) -> bool:
        """Whether a plain prompt and its answer fit the trained window."""
        return len(prompt_ids) + settings.max_new_tokens <= self.native_window

    def split(
        self, messages: Sequence[dict[str, str]], context: Context | None
    ) -> tuple[Context, PromptParts]:
        """A chat over `context` (or over nothing) cut into its parts (`long_prompt`), and the
        context its question is asked over: the caller's documents followed by the chat's."""
        if isinstance(context, ContextCache):
            parts = self.splitter.split(messages)
            if parts.documents:
                raise InvalidInputError(
                    "over an encoded context (ContextCache) a chat can only hold system messages "
                    "and one question: earlier turns cannot be added to it; pass the documents "
                    "as text instead"
                )
            return context, parts
        given = [] if context is None else documents_of(context)
        parts = self.splitter.split(messages, given)
        if not any(document.strip() for document in parts.documents):
            raise InvalidInputError("the chat holds no context beside its question")
        return parts.documents, parts
