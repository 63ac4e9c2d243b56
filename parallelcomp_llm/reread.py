"""Re-reading the kept chunks (`kept_chunks="reread"`): when the chunks a question keeps fit the
trained window with the template, the question and the answer, they are read again as one
ordinary prompt, in document order, and the answer is decoded with plain attention over them.

Chunk selection by the question's likelihood is then the retriever, and the model reads what it
selected as it was trained to: no KV eviction and no parallel positions. Kept chunks that continue
one another in a document are joined as they were tokenized; elsewhere the document separator
stands between them. When the kept chunks do not fit, the pipeline merges their KV instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chunking import Chunk
from .final_pass import FinalRow
from .requests import Request


def _continues(earlier: Chunk, later: Chunk) -> bool:
    """Whether `later` starts where `earlier` ends, inside one document."""
    last, first = earlier.spans[-1], later.spans[0]
    return last.document == first.document and last.end == first.start


@dataclass(frozen=True)
class Reread:
    """Reads kept chunks again within a trained window of `window` tokens; `separator_ids`
    stand between kept chunks that do not continue one another."""

    window: int
    separator_ids: list[int]

    def prompt_ids(self, chunks: list[Chunk], kept: list[int], request: Request) -> list[int]:
        """The prompt of one question: the prefix, the kept chunks in document order, and the
        question block."""
        ids = list(request.encoding.prefix_ids)
        for position, index in enumerate(kept):
            if position and not _continues(chunks[kept[position - 1]], chunks[index]):
                ids += self.separator_ids
            ids += chunks[index].token_ids
        return ids + request.question_ids

    def fits(self, lengths: list[int], request: Request) -> bool:
        """Whether chunks of `lengths` tokens, read again with the request's prefix, question
        block and answer budget (and a separator between every two), fit the window."""
        needed = len(request.encoding.prefix_ids) + sum(lengths) + len(request.question_ids)
        needed += max(0, len(lengths) - 1) * len(self.separator_ids)
        return needed + request.settings.max_new_tokens <= self.window

    def fits_any_choice(self, keep: int, request: Request) -> bool:
        """Whether any `keep` chunks of the request's context would fit when read again: then
        no chunk's KV needs to be kept for a merge."""
        lengths = sorted((len(chunk) for chunk in request.encoding.chunks), reverse=True)
        return self.fits(lengths[:keep], request)

    def row(self, kept: list[int], request: Request) -> FinalRow:
        """The final pass's row for `kept`: no merged KV, the whole prompt from position 0."""
        chunks = request.encoding.chunks
        return FinalRow(None, self.prompt_ids(chunks, kept, request), 0)
