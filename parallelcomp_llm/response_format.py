"""`ResponseFormat`: what a request's answer must be, a JSON value of a schema or text of a
grammar, as a caller gives it (a pydantic model class, a JSON schema, OpenAI's `response_format`
dict) and checked for shape here; the grammar library compiles it (`grammar`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import AnswerFormatError, CheckedModel, InvalidInputError, validation_summary


class ResponseFormat(CheckedModel):
    """The shape every answer of a request takes: `json_schema` (a JSON schema: the answer is one
    JSON value that validates against it) or `lark` (a Lark grammar, in llguidance's dialect).
    With both, `lark` shapes decoding and `json_schema` reads the answer (a chat with tools and a
    response format: a call or the value). `model`, when the format came from a pydantic model
    class, is that class: `parse` then returns an instance of it.

    `ResponseFormat.of` takes what callers write; see its docstring.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    refusal = InvalidInputError

    json_schema: dict[str, Any] | None = None
    lark: str | None = None
    model: type[BaseModel] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ResponseFormat:
        if self.json_schema is None and self.lark is None:
            raise ValueError("give json_schema or lark")
        if self.lark is not None and not self.lark.strip():
            raise ValueError("lark must be a non-empty grammar")
        if self.model is not None and self.json_schema is None:
            raise ValueError("model goes with the json_schema it was made from")
        return self

    @classmethod
    def of(cls, value: object) -> ResponseFormat | None:
        """The format a caller means by `value`:

        - None, or a `ResponseFormat`: itself;
        - a pydantic model class: its JSON schema, answers parsed into that class;
        - OpenAI's dicts: `{"type": "json_object"}` (any JSON object), `{"type": "text"}` (no
          constraint), `{"type": "json_schema", "json_schema": {"schema": {...}, ...}}`;
        - `{"type": "grammar", "grammar": "<lark>"}`;
        - any other dict: a JSON schema.
        """
        if value is None or isinstance(value, ResponseFormat):
            return value
        if isinstance(value, type) and issubclass(value, BaseModel):
            return cls(json_schema=value.model_json_schema(), model=value)
        if not isinstance(value, dict):
            raise InvalidInputError(
                "response_format must be a pydantic model class, a JSON schema (dict), OpenAI's "
                f"response_format dict or a ResponseFormat, got {type(value).__name__}"
            )
        kind = value.get("type")
        if kind == "text" and len(value) == 1:
            return None
        if kind == "json_object" and len(value) == 1:
            return cls(json_schema={"type": "object"})
        if kind == "grammar" and set(value) == {"type", "grammar"}:
            return cls(lark=value["grammar"])
        if kind == "json_schema" and set(value) <= {"type", "json_schema"}:
            spec = value.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise InvalidInputError(
                    'response_format {"type": "json_schema"} needs "json_schema": '
                    '{"schema": {...}} with the schema as a dict'
                )
            return cls(json_schema=spec["schema"])
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"the JSON schema is not JSON data: {error}") from None
        return cls(json_schema=value)

    def parse(self, text: str, finish_reason: str) -> Any:
        """The answer `text` as a value: an instance of `model`, else the JSON value, else the
        text itself (a grammar). `AnswerFormatError` when the answer ended before its value
        was complete (`finish_reason` 'length', or a stop string)."""
        if self.json_schema is None:
            return text
        try:
            value = json.loads(text)
        except ValueError:
            raise AnswerFormatError(
                f"the answer ended ({finish_reason!r}) before its JSON value was complete: "
                f"{text[-80:]!r}; raise max_new_tokens, drop stop strings, or bound the "
                "schema's strings and arrays (maxLength, maxItems)"
            ) from None
        if self.model is None:
            return value
        try:
            return self.model.model_validate(value)
        except ValidationError as error:
            raise AnswerFormatError(
                f"the answer is JSON of the schema, yet {self.model.__name__} refuses it "
                f"(a check its JSON schema does not express): {validation_summary(error)}"
            ) from None
