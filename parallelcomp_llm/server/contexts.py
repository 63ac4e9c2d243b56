"""`ContextRegistry`: corpora uploaded once (`POST /v1/contexts`), encoded, kept by id for chats
that name them (`context_id`), the least recently used dropped past a bound."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict

from ..context_cache import ContextCache


class ContextRegistry:
    """At most `capacity` encoded contexts by id; using one makes it the most recently used."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._contexts: OrderedDict[str, ContextCache] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._contexts)

    def add(self, cache: ContextCache) -> str:
        """Keep `cache` under a new id, dropping the least recently used past the capacity."""
        context_id = f"ctx-{uuid.uuid4().hex}"
        with self._lock:
            self._contexts[context_id] = cache
            while len(self._contexts) > self.capacity:
                self._contexts.popitem(last=False)
        return context_id

    def get(self, context_id: str) -> ContextCache | None:
        """The context kept under `context_id`, now the most recently used; None if unknown."""
        with self._lock:
            cache = self._contexts.get(context_id)
            if cache is not None:
                self._contexts.move_to_end(context_id)
            return cache

    def remove(self, context_id: str) -> bool:
        """Drop the context kept under `context_id`; whether there was one."""
        with self._lock:
            return self._contexts.pop(context_id, None) is not None
