"""A LlamaIndex prompt cut at its context: the engine gets the context as documents, the template's
text before the context as the system prompt and the text after it (with the query) as the
question, so no prompt is packed and nothing has to be guessed.

LlamaIndex's synthesizers and chat engines call `llm.predict(template, context_str=..., ...)`
(`context_msg=` for the refine template). The template is rendered as usual (as messages for a chat
model, else as one prompt) with a marker in place of the context; its texts, joined by blank lines,
are cut at the marker: before it is the system prompt, after it the question (for a context chat
engine's template, the chat history and the user's message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONTEXT_VARIABLES = ("context_str", "context_msg")
"""The template variables that hold the context in LlamaIndex's prompts."""
CONTEXT_MARK = "\x00PARALLELCOMP_CONTEXT\x00"
"""Rendered in place of the context, to find where the template puts it."""


@dataclass(frozen=True)
class ContextCall:
    """A template call as a question over a context, with the text before the context as the
    system prompt (None when there is none)."""

    question: str
    context: str | Sequence[str]
    system_prompt: str | None

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments of `ParallelCompLLM.complete` beside the question."""
        return {"context": self.context, "system_prompt": self.system_prompt}


def context_variable(prompt_args: Mapping[str, Any]) -> str | None:
    """The one context variable among a call's template arguments, else None."""
    found = [name for name in CONTEXT_VARIABLES if name in prompt_args]
    return found[0] if len(found) == 1 else None


def cut_at_context(rendered: Sequence[str], context: str | Sequence[str]) -> ContextCall | None:
    """The call of a template `rendered` (its messages' texts, or its prompt) with `CONTEXT_MARK`
    for `context`; None unless the marker occurs exactly once."""
    text = "\n\n".join(part for part in rendered if part)
    if text.count(CONTEXT_MARK) != 1:
        return None
    before, after = text.split(CONTEXT_MARK)
    return ContextCall(after.strip(), context, before.strip() or None)
