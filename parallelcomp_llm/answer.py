"""Results of a request: `Answer` with its text, token ids, finish reason, `AnswerStats` and
`ToolCall`s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import AnswerFormatError, InvalidInputError
from .response_format import ResponseFormat


@dataclass(frozen=True)
class ChunkInfo:
    """One chunk of the context: the documents it holds, its relevance to the question, whether
    it was kept.

    `relevance` is probability-like: from 0 to 1, higher is more relevant, summing to 1 over the
    context's chunks (the scorer's `shares`: for 'nll', the probability that the question comes
    from this chunk, every chunk equally likely before); 1.0 for a context of one chunk.
    """

    documents: tuple[int, ...]
    tokens: int
    relevance: float
    kept: bool


@dataclass
class AnswerStats:
    """What a request cost and what it kept.

    `context_tokens` counts the tokens of the context's chunks, the separators between packed
    documents included. `scorer` names the chunk scorer whose shares `ChunkInfo.relevance` holds,
    None when the context was one chunk (not scored). `kv_entries_kept` counts the merged KV entries
    per layer and KV head the answer was decoded over. `context_cache_hit` is True when the
    context's encoded chunks were reused (then `chunks_prefilled` is 0). `batch_size` counts the
    questions answered in one batch with this one, itself included (the questions of one
    `generate_batch`, and other callers' questions over the same context); they share the chunk
    prefill, which the first of them counts in `chunks_prefilled`. `reread` is True when the kept
    chunks were read again as one prompt (`kept_chunks="reread"`): then `kv_entries_kept` counts the
    tokens read again (prefix and kept chunks), and no entry was evicted. `peak_memory_bytes`: on
    CUDA the peak allocated during the request's batch (summed over the GPUs of a model spread
    over several), on CPU the peak resident set size of the process so far.
    """

    context_tokens: int = 0
    prompt_tokens: int = 0
    context_cache_hit: bool = False
    chunks_prefilled: int = 0
    chunks_total: int = 0
    batch_size: int = 1
    chunks_kept: int = 0
    kv_entries_kept: int = 0
    reread: bool = False
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    peak_memory_bytes: int = 0
    scorer: str | None = None
    chunks: list[ChunkInfo] = field(default_factory=list)

    @property
    def input_tokens(self) -> int:
        """Tokens the caller supplied: the whole context plus the prompt or question block
        (`prompt_tokens` counts the kept KV entries in place of the context)."""
        return self.context_tokens + self.prompt_tokens - self.kv_entries_kept

    @property
    def kept_documents(self) -> list[int]:
        """Indices of the documents that have at least one kept chunk."""
        return sorted(self.document_relevance)

    @property
    def document_relevance(self) -> dict[int, float]:
        """Each kept document's relevance, by index: that of its most relevant kept chunk."""
        best: dict[int, float] = {}
        for chunk in self.chunks:
            if chunk.kept:
                for document in chunk.documents:
                    best[document] = max(chunk.relevance, best.get(document, 0.0))
        return best


@dataclass(frozen=True)
class ToolCall:
    """One call the answer makes: a new `id`, the tool's `name`, and its `arguments`."""

    id: str
    name: str
    arguments: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        """The call as an assistant message's `tool_calls` item (arguments as a dict, as
        transformers' chat templates take them)."""
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


@dataclass
class Answer:
    """The generated text (stop text removed), its token ids, why it ended, statistics, the
    `response_format` it was asked in (None: free text), and the tool calls it makes (a chat with
    `tools`: then `text` holds only what the model said beside the calls)."""

    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    stats: AnswerStats
    response_format: ResponseFormat | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)

    def parsed(self) -> Any:
        """The answer as its `response_format`'s value: an instance of the pydantic model it was
        asked for, else the JSON value (the text for a grammar). `AnswerFormatError` when it
        ended before the value was complete, or is a tool call instead; `InvalidInputError` when
        no format was asked."""
        if self.tool_calls:
            raise AnswerFormatError(
                "the answer is a tool call (see tool_calls), not a value of the response format"
            )
        if self.response_format is None:
            raise InvalidInputError(
                "this answer was asked without a response_format: there is nothing to parse"
            )
        return self.response_format.parse(self.text, self.finish_reason)
