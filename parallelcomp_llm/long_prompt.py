"""The split of a chat, or of a prompt, too long for the trained window into ParallelComp's parts:
a system prompt (in every chunk's prefix), context documents (chunked) and a question (whole).

The rule (a plain prompt is a chat of one user message):

1. Leading system messages are the system prompt when their text, joined by blank lines, has at
   most `question_reserve_tokens` tokens; longer ones are context (the first documents).
2. The question is the tail of the last message: its last paragraph (the text after its last blank
   line), with the paragraphs before it while it has fewer than `MIN_QUESTION_TOKENS` tokens and
   they fit; a last paragraph whose question block does not fit `question_reserve_tokens` is cut
   to its last lines, then to its last tokens, as many as fit.
3. Everything else is context, in order: the caller's documents, each earlier message as one
   document (`"User: ..."`, `"Assistant: ..."`), then the rest of the last message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InvalidInputError
from .prompt import PromptBuilder, checked_messages, plain_turn

MIN_QUESTION_TOKENS = 16
"""A last paragraph shorter than this ("Answer:") takes the paragraphs before it along."""

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class PromptParts:
    """A chat cut for ParallelComp: `documents` are the context, `question` is asked over it."""

    system_prompt: str | None
    documents: list[str]
    question: str


class PromptSplitter:
    """Cuts chats by the rule above for one tokenizer and question reserve."""

    def __init__(self, prompts: PromptBuilder, question_reserve_tokens: int) -> None:
        self.prompts = prompts
        self.reserve = question_reserve_tokens

    def split(
        self, messages: Sequence[dict[str, str]], documents: Sequence[str] = ()
    ) -> PromptParts:
        """The parts of `messages` (checked by `checked_messages`; tool calls and results as
        text, `plain_turn`), after the caller's `documents`."""
        messages = [plain_turn(message) for message in checked_messages(messages)]
        context = list(documents)
        system_prompt = None
        leading = 0
        while leading < len(messages) - 1 and messages[leading]["role"] == "system":
            leading += 1
        system_text = "\n\n".join(m["content"] for m in messages[:leading] if m["content"].strip())
        if system_text and len(self.prompts.encode(system_text)) <= self.reserve:
            system_prompt = system_text
        elif system_text:
            context.append(system_text)
        for message in messages[leading:-1]:
            if message["content"].strip():
                context.append(f"{message['role'].capitalize()}: {message['content']}")
        rest, question = self._tail(messages[-1]["content"])
        if rest.strip():
            context.append(rest)
        return PromptParts(system_prompt, context, question)

    def _fits(self, question: str) -> bool:
        return len(self.prompts.question_ids(question)) <= self.reserve

    def _tail(self, text: str) -> tuple[str, str]:
        """(the text before the question, the question) of the last message."""
        paragraphs = [p for p in _PARAGRAPH_BREAK.split(text.strip()) if p.strip()]
        question = paragraphs.pop()
        if not self._fits(question):
            return self._cut(paragraphs, question)
        while paragraphs and len(self.prompts.encode(question)) < MIN_QUESTION_TOKENS:
            longer = paragraphs[-1] + "\n\n" + question
            if not self._fits(longer):
                break
            question = longer
            paragraphs.pop()
        return "\n\n".join(paragraphs), question

    def _cut(self, paragraphs: list[str], paragraph: str) -> tuple[str, str]:
        """A last paragraph too long for the question block: its last lines that fit, else its
        last tokens that fit."""
        lines = paragraph.split("\n")
        kept: list[str] = []
        while lines and self._fits("\n".join([lines[-1], *kept])):
            kept.insert(0, lines.pop())
        if kept:
            question, before = "\n".join(kept), "\n".join(lines)
        else:
            ids = self.prompts.encode(paragraph)
            room = self.reserve - len(self.prompts.question_ids(""))
            while room > 0:
                question = self.prompts.tokenizer.decode(ids[-room:])
                if self._fits(question):
                    break
                room -= max(1, room // 16)
            if room <= 0:
                raise InvalidInputError(
                    f"question_reserve_tokens={self.reserve} leaves no room for a question "
                    "after the prompt template; raise it"
                )
            before = self.prompts.tokenizer.decode(ids[:-room])
        return "\n\n".join([*paragraphs, before]), question
