"""Token layout of a ParallelComp prompt: `[prefix][context chunk][question block]`.

The prefix and the question block come from the model's chat template (instruct models) or from
a plain "question / answer" frame (base models). The template is rendered around two marker
strings and cut at them, so every chunk sees an ordinary in-window prompt. A request's system
prompt is part of the prefix: the template's system turn, or the text before the context where
the template has no system role (and for base models).

Text from callers (documents, questions, system prompts, chat messages) is tokenized with special
tokens split, so that no input can produce a control token such as `<|im_end|>`; only the
template's own text is tokenized with them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from .answer import ToolCall
from .errors import InvalidConfigError, InvalidInputError
from .tokenizer_pool import TokenizerPool

if TYPE_CHECKING:
    from .tools import ToolSet

_CONTEXT_MARK = "\x00PARALLELCOMP_CONTEXT\x00"
_QUESTION_MARK = "\x00PARALLELCOMP_QUESTION\x00"
_SYSTEM_MARK = "\x00PARALLELCOMP_SYSTEM\x00"
_MARK = re.compile("(\x00PARALLELCOMP_[A-Z0-9_]+\x00)")
_PLAIN_QUESTION_FRAME = ("\n\nQuestion: ", "\nAnswer:")


@dataclass(frozen=True)
class PromptTemplate:
    """Text around the context and the question, split at the marker positions."""

    prefix: str
    between: str
    suffix: str
    add_bos: bool

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        use_chat_template: bool | None,
        system_prompt: str | None = None,
    ) -> PromptTemplate:
        """The template of `tokenizer`, with `system_prompt` (if any; a marker string, for
        `PromptBuilder`) in its prefix."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template is None:
            use_chat_template = has_template
        if use_chat_template:
            if not has_template:
                raise InvalidConfigError(
                    "use_chat_template=True but the tokenizer has no chat template"
                )
            rendered = _render_with_system(tokenizer, system_prompt)
            prefix, rest = rendered.split(_CONTEXT_MARK)
            between, suffix = rest.split(_QUESTION_MARK)
            return cls(prefix=prefix, between=between, suffix=suffix, add_bos=False)
        before, after = _PLAIN_QUESTION_FRAME
        prefix = system_prompt + "\n\n" if system_prompt else ""
        return cls(prefix=prefix, between=before, suffix=after, add_bos=True)


def _render_with_system(tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> str:
    """The chat template around the markers, with `system_prompt` as the system turn; templates
    that refuse a system role get it at the start of the user turn instead."""
    user = _CONTEXT_MARK + "\n\n" + _QUESTION_MARK
    messages = [{"role": "user", "content": user}]
    if system_prompt:
        try:
            return tokenizer.apply_chat_template(
                [{"role": "system", "content": system_prompt}, *messages],
                tokenize=False,
                add_generation_prompt=True,
            )
        except TemplateError:
            messages = [{"role": "user", "content": system_prompt + "\n\n" + user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class PromptBuilder:
    """Tokenizes the parts of ParallelComp prompts for one tokenizer and its template."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, use_chat_template: bool | None) -> None:
        self.tokenizer = tokenizer
        self.template = PromptTemplate.for_tokenizer(tokenizer, use_chat_template)
        self._system_template = PromptTemplate.for_tokenizer(
            tokenizer, use_chat_template, _SYSTEM_MARK
        )
        self._pool = TokenizerPool(tokenizer)
        bos = tokenizer.bos_token_id
        self._bos = [bos] if self.template.add_bos and bos is not None else []
        self.prefix_ids = self._bos + self._template_ids(self.template.prefix)
        """The prefix of every chunk when the request has no system prompt."""
        self.max_token_characters = max(len(token) for token in tokenizer.get_vocab())
        """No token stands for more characters of text than this, so a text of `n` characters
        has at least `n / max_token_characters` tokens (a bound known before tokenizing)."""

    def prefix_with(self, system_prompt: str | None) -> list[int]:
        """The chunk prefix of a request with `system_prompt` (the default prefix for None)."""
        if system_prompt is None:
            return self.prefix_ids
        if not isinstance(system_prompt, str) or not system_prompt.strip():
            raise InvalidInputError("system_prompt must be a non-blank string or None")
        prefix = self._system_template.prefix
        return self._bos + self._marked_ids(prefix, {_SYSTEM_MARK: system_prompt})

    def encode(self, text: str) -> list[int]:
        """Token ids of caller text, special tokens split (never a control token) and none
        added; `InvalidInputError` for what is not a string of valid Unicode."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidInputError(
                f"text holds a lone surrogate at character {error.start}, which is not valid "
                "Unicode: decode the source with errors='replace'"
            ) from None
        return self._ids(text, split_special_tokens=True)

    def _template_ids(self, text: str) -> list[int]:
        """Token ids of the template's own text, its special tokens recognised."""
        return self._ids(text, split_special_tokens=False)

    def _ids(self, text: str, split_special_tokens: bool) -> list[int]:
        """Each call on a tokenizer of its own (`TokenizerPool`)."""
        if not text:
            return []
        with self._pool.lend() as tokenizer:
            encoded = tokenizer(
                text, add_special_tokens=False, split_special_tokens=split_special_tokens
            )
        return list(encoded["input_ids"])

    def _marked_ids(self, rendered: str, texts: dict[str, str]) -> list[int]:
        """Token ids of rendered template text in which markers stand for caller `texts`."""
        ids: list[int] = []
        for part in _MARK.split(rendered):
            ids += self.encode(texts[part]) if part in texts else self._template_ids(part)
        return ids

    def question_ids(self, question: str) -> list[int]:
        """The question block: text after the context, the question, end of turn, answer header.

        The text between context and question is the template's blank line (or the plain
        frame's "Question:"), free of special tokens, and is tokenized with the question, as the
        model sees it in a rendered chat.
        """
        between, suffix = self.template.between, self.template.suffix
        return self.encode(between + question) + self._template_ids(suffix)

    def completion_ids(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt to continue (no template; BOS for base models)."""
        return self._bos + self.encode(prompt)

    def chat_prompt_ids(
        self, messages: Sequence[dict[str, Any]], tools: ToolSet | None = None
    ) -> list[int]:
        """Token ids of a whole chat (no separate context), ready for the answer;
        `InvalidInputError` unless `messages` pass `checked_messages`. `tools` go through the
        template's `tools=` argument where it takes one, else into the system turn as text
        (`ToolSet.instructions`), and calls and tool results become text too."""
        messages = checked_messages(messages)
        offered = tools.offered if tools is not None else []
        if offered and self.template_takes_tools:
            return self._rendered_ids(messages, [tool.openai() for tool in offered])
        turns = [plain_turn(message) for message in messages]
        if offered:
            turns = with_system_text(turns, tools.instructions())
        if self.template.add_bos or not getattr(self.tokenizer, "chat_template", None):
            ids = list(self._bos)
            for number, turn in enumerate(turns):
                ids += self.encode(("\n\n" if number else "") + turn["content"])
            return ids + self._template_ids(self.template.suffix)
        return self._rendered_ids(turns, None)

    def _rendered_ids(
        self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int]:
        """The chat template over `turns` (and `tools`), each turn's content tokenized as caller
        text; the tools' and calls' JSON, which the template renders itself, may hold no control
        token."""
        calls = [turn.get("tool_calls", []) for turn in turns]
        self.check_free_of_control_tokens(json.dumps([tools or [], calls]))
        marks = {f"\x00PARALLELCOMP_MESSAGE_{n}\x00": t["content"] for n, t in enumerate(turns)}
        marked = [{**t, "content": mark} for t, mark in zip(turns, marks, strict=True)]
        rendered = self.tokenizer.apply_chat_template(
            marked, tools=tools, tokenize=False, add_generation_prompt=True
        )
        return self._marked_ids(rendered, marks)

    def check_free_of_control_tokens(self, text: str) -> None:
        """`InvalidInputError` when `text`, which the template renders as its own, spells one of
        the tokenizer's control tokens."""
        for token in self.tokenizer.all_special_tokens:
            if token in text:
                raise InvalidInputError(
                    f"a tool or tool call holds the control token {token!r}; remove it"
                )

    @functools.cached_property
    def template_takes_tools(self) -> bool:
        """Whether the chat template renders a `tools=` argument (Qwen2.5's does, SmolLM2's
        does not)."""
        if self.template.add_bos or not getattr(self.tokenizer, "chat_template", None):
            return False
        probe = [{"role": "user", "content": "x"}]
        tool = {"type": "function", "function": {"name": "parallelcomp_probe", "parameters": {}}}
        without = self.tokenizer.apply_chat_template(probe, tokenize=False)
        try:
            offered = self.tokenizer.apply_chat_template(probe, tools=[tool], tokenize=False)
        except TemplateError:
            return False
        return "parallelcomp_probe" in offered and offered != without


def checked_messages(messages: object) -> list[dict[str, Any]]:
    """`messages` as a list of role/content dicts, each assistant message's `tool_calls` (OpenAI's
    format, arguments as a dict or a JSON string) as `ToolCall` dicts; `InvalidInputError` for
    anything else."""
    if (
        isinstance(messages, str | bytes)
        or not isinstance(messages, Sequence)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        or not all(isinstance(m.get("content"), str) or _only_calls(m) for m in messages)
    ):
        raise InvalidInputError(
            "messages must be a non-empty list of {'role': str, 'content': str} dicts"
        )
    checked = [_checked_message(message) for message in messages]
    if not checked[-1]["content"].strip():
        raise InvalidInputError("the last message is empty: it holds the question")
    return checked


def _only_calls(message: dict[str, Any]) -> bool:
    """An assistant message of tool calls alone, whose content OpenAI's format leaves None."""
    return message.get("content") is None and bool(message.get("tool_calls"))


def _checked_message(message: dict[str, Any]) -> dict[str, Any]:
    checked = {**message, "content": message.get("content") or ""}
    if "tool_calls" in message:
        calls = message["tool_calls"]
        if message["role"] != "assistant" or not isinstance(calls, list):
            raise InvalidInputError("tool_calls must be a list, in an assistant message")
        checked["tool_calls"] = [_checked_call(call) for call in calls]
    return checked


def _checked_call(call: object) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    arguments = function.get("arguments", {}) if isinstance(function, dict) else None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        raise InvalidInputError(
            "a tool call must be {'id': str, 'type': 'function', 'function': {'name': str, "
            f"'arguments': dict or JSON object text}}}}, got {call!r}"
        )
    return ToolCall(str(call.get("id") or ""), name, arguments).openai()


def plain_turn(message: dict[str, Any]) -> dict[str, Any]:
    """A checked message as text alone: its calls in `<tool_call>` tags after its content, a tool
    result as a user turn inside `<tool_response>` tags (`tools`' wire format)."""
    if message["role"] == "tool":
        response = f"<tool_response>\n{message['content']}\n</tool_response>"
        return {"role": "user", "content": response}
    if "tool_calls" not in message:
        return {"role": message["role"], "content": message["content"]}
    calls = [
        "<tool_call>\n"
        + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
        + "\n</tool_call>"
        for c in message["tool_calls"]
    ]
    return {"role": "assistant", "content": "\n".join(filter(None, [message["content"], *calls]))}


def with_system_text(turns: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """`turns` with `text` at the end of the leading system turn (a new one if there is none)."""
    if turns and turns[0]["role"] == "system":
        return [{**turns[0], "content": turns[0]["content"] + "\n\n" + text}, *turns[1:]]
    return [{"role": "system", "content": text}, *turns]
