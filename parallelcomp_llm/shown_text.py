"""`ShownText`: the part of a chat answer with tools that a stream shows as it is generated, the
text and never a call's markup."""

from __future__ import annotations

from .tools import CALL_TAG, ToolSet


class ShownText:
    """The text of a streamed chat answer with `tools` to show as it is generated: all of it with
    `tool_choice="none"`, none of it for a forced call (the whole answer is the call's JSON), and
    otherwise the text before the first call tag, its tail held back while it may be the start of
    one. Once the answer is complete, `rest` is what is still to show of its text."""

    def __init__(self, tools: ToolSet) -> None:
        self._tools = tools
        self._generated = ""
        self.shown = ""
        """The text shown so far."""

    def add(self, delta: str) -> str:
        """Take the next generated `delta`; the text it lets show now ('' while held back)."""
        self._generated += delta
        visible = self._visible()
        added, self.shown = visible[len(self.shown) :], visible
        return added

    def rest(self, final_text: str) -> str:
        """What is still to show of the answer's `final_text` (its text beside the calls): the
        rest of it where it goes on from the shown text (text held back that was no call after
        all), else ''."""
        return final_text[len(self.shown) :] if final_text.startswith(self.shown) else ""

    def _visible(self) -> str:
        text = self._generated
        if self._tools.choice == "none":
            return text
        if self._tools.forced:
            return ""
        start = text.find(CALL_TAG)
        if start >= 0:
            return text[:start]
        held = next((n for n in range(len(CALL_TAG) - 1, 0, -1) if text.endswith(CALL_TAG[:n])), 0)
        return text[: len(text) - held]
