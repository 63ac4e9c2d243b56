"""Structured output by constrained decoding: a template call with the output class as the
engine's `response_format`, so that every answer is JSON of the class's schema, and streamed
responses as LlamaIndex's partial objects, the last one the validated instance.

`TemplateRequest` is a rendered template as one call of the LLM: a question over the template's
context argument (`framing`), a chat of its messages (chat models) or its prompt (other models),
sent, streamed, or either for async callers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
)
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.llms.llm import LLM
from llama_index.core.program.streaming_utils import process_streaming_content_incremental
from llama_index.core.program.utils import FlexibleModel


@dataclass(frozen=True)
class TemplateRequest:
    """A rendered template as one call: `chat(messages, **options)` when `messages` is set, else
    `complete(prompt, formatted=True, **options)` (with a `context` option for a template with
    a context argument)."""

    messages: list[ChatMessage] | None
    prompt: str | None
    options: dict[str, Any]

    def send(self, llm: LLM) -> ChatResponse | CompletionResponse:
        """The call's response from `llm`."""
        if self.messages is not None:
            return llm.chat(self.messages, **self.options)
        return llm.complete(self.prompt, formatted=True, **self.options)

    async def asend(self, llm: LLM) -> ChatResponse | CompletionResponse:
        """`send` for async callers."""
        if self.messages is not None:
            return await llm.achat(self.messages, **self.options)
        return await llm.acomplete(self.prompt, formatted=True, **self.options)

    def stream(self, llm: LLM) -> Iterator[ChatResponse | CompletionResponse]:
        """The call's streamed responses from `llm`."""
        if self.messages is not None:
            return llm.stream_chat(self.messages, **self.options)
        return llm.stream_complete(self.prompt, formatted=True, **self.options)

    async def astream(self, llm: LLM) -> AsyncIterator[ChatResponse | CompletionResponse]:
        """`stream` for async callers."""
        if self.messages is not None:
            return await llm.astream_chat(self.messages, **self.options)
        return await llm.astream_complete(self.prompt, formatted=True, **self.options)


def with_format(llm_kwargs: dict[str, Any] | None, output_cls: type[BaseModel]) -> dict[str, Any]:
    """A structured call's keyword arguments: LlamaIndex's `llm_kwargs` and the output class as the
    engine's `response_format`."""
    return {**(llm_kwargs or {}), "response_format": output_cls}


def parsed(response: ChatResponse | CompletionResponse) -> BaseModel:
    """The validated output of a final response (`AnswerFormatError` when the answer was cut
    before its value was complete)."""
    return response.raw["answer"].parsed()


def partial_outputs(
    responses: Iterator[ChatResponse | CompletionResponse], output_cls: type[BaseModel]
) -> Iterator[BaseModel | FlexibleModel]:
    """For each streamed response, the object its text so far holds (LlamaIndex's partial
    parsing); for the final one, the validated `output_cls` instance."""
    current: BaseModel | FlexibleModel | None = None
    for response in responses:
        current = _output(response, output_cls, current)
        yield current


async def apartial_outputs(
    responses: AsyncIterator[ChatResponse | CompletionResponse], output_cls: type[BaseModel]
) -> AsyncIterator[BaseModel | FlexibleModel]:
    """`partial_outputs` for async callers."""
    current: BaseModel | FlexibleModel | None = None
    async for response in responses:
        current = _output(response, output_cls, current)
        yield current


def _output(
    response: ChatResponse | CompletionResponse,
    output_cls: type[BaseModel],
    current: BaseModel | FlexibleModel | None,
) -> BaseModel | FlexibleModel:
    if response.raw is not None:
        return parsed(response)
    if isinstance(response, CompletionResponse):
        response = ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text)
        )
    return process_streaming_content_incremental(response, output_cls, current)
