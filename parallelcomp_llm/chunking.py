"""The chunk plan: how large chunks are, and how tokenized documents are cut into them.

Chunks fit the model's trained window beside the prompt template, the question and the answer.
Small documents are packed together (with a separator) and large ones are split into pieces of
equal size, so that chunks are comparable when they are ranked. Every context token lands in
exactly one chunk, in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import InvalidConfigError

if TYPE_CHECKING:
    from .config import ParallelCompConfig

MIN_CHUNK_TOKENS = 16


@dataclass(frozen=True)
class Span:
    """Tokens `[start, end)` of document `document` sit at `[offset, offset + end - start)` in a chunk."""

    document: int
    start: int
    end: int
    offset: int


@dataclass
class Chunk:
    """Context token ids of one chunk and the document spans they come from."""

    token_ids: list[int] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def documents(self) -> list[int]:
        return sorted({span.document for span in self.spans})


def _pieces(token_ids: list[int], chunk_len: int) -> list[tuple[int, int]]:
    """Split `[0, n)` into the fewest pieces of at most `chunk_len`, sizes differing by at most one."""
    n = len(token_ids)
    count = max(1, math.ceil(n / chunk_len))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def split_into_chunks(
    documents: list[list[int]], chunk_len: int, separator_ids: list[int]
) -> list[Chunk]:
    """Pack or split tokenized `documents` into chunks of at most `chunk_len` tokens.

    Document boundaries are chunk boundaries where possible: a document that fits in the current
    chunk (after a separator) joins it, one that does not starts a new chunk, and one longer than
    `chunk_len` is cut into equal pieces, each its own chunk. Empty documents are skipped.
    """
    if chunk_len < 1:
        raise ValueError("chunk_len must be positive")
    chunks: list[Chunk] = []
    current = Chunk()
    for index, ids in enumerate(documents):
        if not ids:
            continue
        if len(ids) > chunk_len:
            if current.token_ids:
                chunks.append(current)
                current = Chunk()
            for start, end in _pieces(ids, chunk_len):
                chunks.append(Chunk(list(ids[start:end]), [Span(index, start, end, 0)]))
            continue
        needed = len(ids) + (len(separator_ids) if current.token_ids else 0)
        if current.token_ids and len(current) + needed > chunk_len:
            chunks.append(current)
            current = Chunk()
        if current.token_ids:
            current.token_ids.extend(separator_ids)
        current.spans.append(Span(index, 0, len(ids), len(current)))
        current.token_ids.extend(ids)
    if current.token_ids:
        chunks.append(current)
    return chunks


@dataclass(frozen=True)
class ChunkPlan:
    """How a model's contexts are cut: each chunk holds at most `chunk_tokens` context tokens.

    `room` is what the trained window leaves beside the prompt template and the question and
    answer reserves. With the default chunk size (`chunk_room_fraction` of the room), a context
    that fits the room stays one chunk (`one_chunk_room`); a longer one is cut into chunks of
    `chunk_tokens`.
    """

    room: int
    chunk_tokens: int
    one_chunk_room: int | None
    separator_ids: list[int]

    @classmethod
    def for_window(
        cls,
        window: int,
        prefix_tokens: int,
        config: ParallelCompConfig,
        separator_ids: list[int],
    ) -> ChunkPlan:
        """The plan for a trained window of `window` tokens and a template prefix of
        `prefix_tokens`; `InvalidConfigError` when the chunk size does not fit."""
        room = window - prefix_tokens - config.question_reserve_tokens
        room -= config.answer_reserve_tokens
        chunk_tokens = config.chunk_tokens or min(
            room, max(MIN_CHUNK_TOKENS, int(room * config.chunk_room_fraction))
        )
        if chunk_tokens > room or chunk_tokens < MIN_CHUNK_TOKENS:
            raise InvalidConfigError(
                f"chunk_tokens={chunk_tokens} does not fit the trained window of {window} tokens "
                f"with the prompt template ({prefix_tokens}), question_reserve_tokens "
                f"({config.question_reserve_tokens}) and answer_reserve_tokens "
                f"({config.answer_reserve_tokens}): at most {room}"
            )
        one_chunk = room if config.chunk_tokens is None and chunk_tokens < room else None
        return cls(room, chunk_tokens, one_chunk, list(separator_ids))

    def split(self, documents: list[list[int]], extra_prefix_tokens: int = 0) -> list[Chunk]:
        """The chunks of tokenized `documents` under this plan; a prefix longer than the
        template's by `extra_prefix_tokens` (a system prompt) shrinks the one-chunk room."""
        one_chunk_room = (self.one_chunk_room or 0) - max(0, extra_prefix_tokens)
        one_chunk = self.one_chunk_room is not None and one_chunk_room > self.chunk_tokens
        if one_chunk and sum(map(len, documents)) <= one_chunk_room:
            whole = split_into_chunks(documents, one_chunk_room, self.separator_ids)
            if len(whole) <= 1:
                return whole
        return split_into_chunks(documents, self.chunk_tokens, self.separator_ids)
