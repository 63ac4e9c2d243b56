"""`TokenizerPool`: copies of one tokenizer, each lent to one thread at a time.

A fast tokenizer shared by threads can fail with "Already borrowed" (transformers sets its
truncation and special-token options before each call), so calls on one tokenizer must not
overlap; and one lock around it would make every caller wait for the longest text being
tokenized. The pool lends each caller a copy of its own (made on demand, up to `size`), so that a
short question is tokenized while another thread tokenizes a book: fast tokenizers release the
GIL while they work.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from transformers import PreTrainedTokenizerBase

POOL_SIZE = 4
"""Most texts tokenized at once; more callers wait for a copy to come back."""


class TokenizerPool:
    """Lends copies of `tokenizer` (never the tokenizer itself, which stays free for decoding and
    chat templates), at most `size` of them."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, size: int = POOL_SIZE) -> None:
        self.tokenizer = tokenizer
        self.size = size
        self._idle: queue.SimpleQueue[PreTrainedTokenizerBase] = queue.SimpleQueue()
        self._made = 0
        self._lock = threading.Lock()

    @contextmanager
    def lend(self) -> Iterator[PreTrainedTokenizerBase]:
        """A copy of the tokenizer for this thread alone, for the `with` block."""
        lent = self._take()
        try:
            yield lent
        finally:
            self._idle.put(lent)

    def _take(self) -> PreTrainedTokenizerBase:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            make = self._made < self.size
            self._made += make
        if make:
            return copy.deepcopy(self.tokenizer)
        return self._idle.get()
