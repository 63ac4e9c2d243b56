"""Tool calling: the tools a chat may call (`Tool`, in OpenAI's function format), which call the
answer must make (`tool_choice`), the prompt text that offers them to a chat template without
tool support, the grammar that forces a call, and the calls read back from an answer
(`ToolCall`).

The wire format is the Hermes one that Qwen2.5 and SmolLM3 templates teach: a call is a JSON
object `{"name": ..., "arguments": {...}}`, inside `<tool_call>` ... `</tool_call>` when the
model chose to call (`tool_choice="auto"`), bare when the grammar forced it (`"required"` or a
tool's name). Tool results go back to the model inside `<tool_response>` ... `</tool_response>`
where the template has no tool role of its own.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from .answer import Answer, ToolCall
from .errors import CheckedModel, InvalidInputError
from .grammar import lark_json
from .response_format import ResponseFormat

CALL_TAG = "<tool_call>"
"""Where a call starts in an answer that chose to make one."""
_CALL = re.compile(re.escape(CALL_TAG) + r"\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
MAX_TOOLS = 128
"""Most tools one request may offer."""


class Tool(CheckedModel):
    """A function the model may call: its name, what it does, and its arguments' JSON schema."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    refusal = InvalidInputError

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("parameters")
    @classmethod
    def _an_object_schema(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        """An object schema; one that lists no properties takes none (a call with no
        arguments), unless it says `additionalProperties`."""
        if parameters.get("type", "object") != "object":
            raise ValueError("a tool's parameters must be a JSON schema of type object")
        json.dumps(parameters)
        return {"type": "object", "properties": {}} | parameters

    @classmethod
    def of(cls, value: object) -> Tool:
        """A tool from OpenAI's `{"type": "function", "function": {...}}`, from the bare function
        dict `{"name", "description", "parameters"}`, or a `Tool`."""
        if isinstance(value, Tool):
            return value
        if isinstance(value, dict) and value.get("type") == "function":
            value = value.get("function")
        if not isinstance(value, dict):
            raise InvalidInputError(
                "a tool must be a Tool or OpenAI's {'type': 'function', 'function': {'name', "
                f"'description', 'parameters'}}, got {type(value).__name__}"
            )
        return cls(**{key: item for key, item in value.items() if key != "strict"})

    def openai(self) -> dict[str, Any]:
        """The tool in OpenAI's function format (what chat templates take as `tools=`)."""
        function = {"name": self.name, "description": self.description}
        return {"type": "function", "function": function | {"parameters": self.parameters}}


ToolChoice = Literal["auto", "none", "required"] | str
"""'auto' (the model decides), 'none' (no call), 'required' (at least one call of any tool), or a
tool's name (a call of that tool)."""


class ToolSet:
    """The tools of one request and its `tool_choice`, checked."""

    def __init__(self, tools: Sequence[object], tool_choice: object = "auto") -> None:
        if isinstance(tools, str | bytes | dict) or not isinstance(tools, Sequence) or not tools:
            raise InvalidInputError("tools must be a non-empty list of tools")
        if len(tools) > MAX_TOOLS:
            raise InvalidInputError(f"at most {MAX_TOOLS} tools per request, got {len(tools)}")
        self.tools = [Tool.of(tool) for tool in tools]
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"tool names must be distinct, got {names}")
        self.choice = self._choice(tool_choice, names)

    @staticmethod
    def _choice(tool_choice: object, names: list[str]) -> str:
        if tool_choice is None:
            return "auto"
        if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
            tool_choice = (tool_choice.get("function") or {}).get("name")
        if tool_choice == "any":
            return "required"
        if tool_choice in ("auto", "none", "required") or tool_choice in names:
            return tool_choice
        raise InvalidInputError(
            f"tool_choice must be 'auto', 'none', 'required' or a tool's name ({names}), got "
            f"{tool_choice!r}"
        )

    @property
    def forced(self) -> bool:
        """Whether the answer must be a call (then the grammar makes it one)."""
        return self.choice not in ("auto", "none")

    @property
    def offered(self) -> list[Tool]:
        """The tools the prompt shows the model (none for 'none')."""
        return [] if self.choice == "none" else self.tools

    def response_format(self, answer: ResponseFormat | None) -> ResponseFormat | None:
        """The grammar of the answer, given the `answer` format the caller asked for (if any).

        A forced call: one JSON object naming a tool the choice allows, with arguments of that
        tool's schema (an `answer` format applies to later, unforced turns, as in OpenAI's API).
        With 'auto' and a JSON-schema `answer`: one or more tagged calls, or the value; without
        an `answer`: None (the model answers freely). With 'none': `answer` itself.
        """
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
                "required": ["name", "arguments"],
            }
            for tool in self.tools
            if self.choice in ("auto", "required", tool.name)
        ]
        call = calls[0] if len(calls) == 1 else {"anyOf": calls}
        if self.forced:
            return ResponseFormat(json_schema=call)
        if answer is None or self.choice == "none":
            return answer
        if answer.json_schema is None or answer.lark is not None:
            raise InvalidInputError(
                "with tools, a response_format must be a JSON schema (the answer is then a call "
                "or a value of the schema)"
            )
        lark = (
            "start: call+ | value\n"
            f'call: "<tool_call>\\n" {lark_json(call)} "\\n</tool_call>\\n"\n'
            f"value: {lark_json(answer.json_schema)}\n"
        )
        return answer.model_copy(update={"lark": lark})

    def instructions(self) -> str:
        """The tools offered as prompt text, for templates without tool support and for chats
        answered with ParallelComp."""
        listed = "\n".join(json.dumps(tool.openai()["function"]) for tool in self.offered)
        return (
            "You may call these tools, described as JSON schemas:\n"
            f"<tools>\n{listed}\n</tools>\n"
            "To call one, answer with a JSON object with the tool's name and arguments, inside "
            'tags:\n<tool_call>\n{"name": <tool name>, "arguments": <arguments object>}\n'
            "</tool_call>"
        )

    def answered(self, answer: Answer) -> Answer:
        """`answer` with the calls it makes in `tool_calls`, and in `text` only what it says
        beside them. A block that is not a JSON call of an offered tool stays in the text."""
        if self.choice == "none":
            return answer
        if self.forced:
            blocks = [(0, len(answer.text), answer.text)]
        else:
            blocks = [(m.start(), m.end(), m.group(1)) for m in _CALL.finditer(answer.text)]
        calls, kept, at = [], [], 0
        for start, end, block in blocks:
            call = self._call(block)
            if call is not None:
                calls.append(call)
                kept.append(answer.text[at:start])
                at = end
        kept.append(answer.text[at:])
        if not calls:
            return answer
        return replace(answer, text="".join(kept).strip(), tool_calls=calls)

    def _call(self, block: str) -> ToolCall | None:
        try:
            value = json.loads(block)
        except ValueError:
            return None
        names = {tool.name for tool in self.tools}
        if not isinstance(value, dict) or value.get("name") not in names:
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(f"call_{uuid.uuid4().hex[:24]}", value["name"], arguments)
