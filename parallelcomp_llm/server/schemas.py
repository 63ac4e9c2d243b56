"""Requests and responses in OpenAI's shapes (chat completions, completions, models), and the
corpus upload of `POST /v1/contexts`. Requests ignore fields they do not know, as OpenAI servers
do; a field they know is checked, and a bad value is a 400 naming it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Lenient(BaseModel):
    """A request part: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")


class Document(Lenient):
    """One document of a corpus (vLLM's chat `documents` item)."""

    title: str | None = None
    text: str

    def as_text(self) -> str:
        """The document as the engine reads it: its title, a blank line, its text."""
        return f"{self.title}\n\n{self.text}" if self.title else self.text


def documents_text(documents: list[Document]) -> list[str]:
    return [document.as_text() for document in documents]


class TextPart(Lenient):
    """A text part of a message's content (the only kind this server reads)."""

    type: Literal["text"]
    text: str


class ChatMessage(Lenient):
    """One message of a chat, in OpenAI's format ("developer" is read as "system")."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def for_engine(self) -> dict[str, Any]:
        """The message as the engine takes it: content as one text, unset fields left out."""
        message = self.model_dump(exclude_none=True)
        message["role"] = "system" if self.role == "developer" else self.role
        if isinstance(self.content, list):
            message["content"] = "".join(part.text for part in self.content)
        return message


class StreamOptions(Lenient):
    include_usage: bool = False


class Sampling(Lenient):
    """What chat and plain completions share: the model, decoding settings, streaming."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def decode_options(self) -> dict[str, Any]:
        """The given settings as the engine's `DecodeSettings` fields (unset ones left to the
        engine: a request without `temperature` decodes greedily)."""
        options = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
        }
        return {name: value for name, value in options.items() if value is not None}


class ChatCompletionRequest(Sampling):
    """`POST /v1/chat/completions`, with the corpus as `documents` or as an uploaded
    `context_id`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    documents: list[Document] | None = Field(None, min_length=1)
    context_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_corpus(self) -> ChatCompletionRequest:
        if self.documents is not None and self.context_id is not None:
            raise ValueError("give documents or context_id, not both")
        return self

    def decode_options(self) -> dict[str, Any]:
        """`Sampling`'s, with `max_completion_tokens` over `max_tokens` and the
        `response_format`."""
        options = super().decode_options()
        if self.max_completion_tokens is not None:
            options["max_new_tokens"] = self.max_completion_tokens
        if self.response_format is not None:
            options["response_format"] = self.response_format
        return options


class CompletionRequest(Sampling):
    """`POST /v1/completions`: one prompt to continue."""

    prompt: str


class ContextUpload(Lenient):
    """`POST /v1/contexts`: a corpus to encode once, and the system prompt its chats will have
    (none by default)."""

    documents: list[Document] = Field(min_length=1)
    system_prompt: str | None = None


# -- responses ------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    """Token counts; `cached_tokens` are the context's when its encoding was reused."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCall(BaseModel):
    name: str
    arguments: str
    """The arguments as JSON text, as OpenAI sends them."""


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallDelta(ToolCallOut):
    index: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(BaseModel):
    """A plain completion, whole or one stream chunk (OpenAI uses one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "parallelcomp"
    max_model_len: int
    """Most context tokens a request may carry (the engine's `context_window`)."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ContextInfo(BaseModel):
    """An uploaded corpus: its id (a chat's `context_id`), its size, its chunks."""

    id: str
    object: Literal["context"] = "context"
    created: int
    context_tokens: int
    chunks: int


class ContextDeleted(BaseModel):
    id: str
    object: Literal["context"] = "context"
    deleted: bool = True
