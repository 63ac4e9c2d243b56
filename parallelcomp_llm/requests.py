"""What the engine hands the pipeline: a context cut into chunks, and the questions asked of it;
and the check of the documents a caller passes as context."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .admission import Deadline
from .chunking import Chunk
from .context_cache import ContextCache
from .decode_settings import DecodeSettings
from .errors import InvalidInputError


@dataclass
class Encoding:
    """The chunks of a context, its identity (`context_key`), its encoded KV when the caller
    passed a `ContextCache`, and the prefix every chunk is prefilled after (the template's, with
    the request's system prompt)."""

    chunks: list[Chunk]
    context_tokens: int
    context_key: str
    cache: ContextCache | None
    prefix_ids: list[int]


@dataclass
class Request:
    """One question over an encoded context, checked: its question block's token ids and its
    decoding settings (`max_new_tokens` resolved)."""

    encoding: Encoding
    question_ids: list[int]
    settings: DecodeSettings
    deadline: Deadline
    progress: bool


@dataclass
class PromptRequest:
    """One prompt run as an ordinary LLM, within the trained window (`complete`, `chat`)."""

    prompt_ids: list[int]
    settings: DecodeSettings
    deadline: Deadline


def documents_of(context: object) -> list[str]:
    """The documents of a `context` argument (a string, or a sequence of strings), refused with
    `InvalidInputError` when it is anything else or holds no text at all."""
    if isinstance(context, str):
        documents = [context]
    elif isinstance(context, Sequence) and not isinstance(context, bytes | bytearray):
        documents = list(context)
    else:
        raise InvalidInputError(
            f"context must be a string or a sequence of strings, got {type(context).__name__}"
        )
    for index, document in enumerate(documents):
        if not isinstance(document, str):
            raise InvalidInputError(
                f"context document {index} is a {type(document).__name__}, not a string"
            )
    if not any(document.strip() for document in documents):
        raise InvalidInputError("context is empty: give at least one non-blank document")
    return documents
