"""Retrieval baselines (`rag-bm25*`): what a user would build instead of giving the whole corpus
to ParallelComp, from the frameworks' own parts.

The context is split into nodes by LlamaIndex's `SentenceSplitter` (sizes in the model's own
tokens), the nodes are ranked by BM25 with the question (`llama-index-retrievers-bm25`, over
bm25s, English stemming and stop words), and the best ones, as many as fit a token budget, are put
back in document order (order-preserving RAG) and answered by the same model with plain attention
inside its trained window. The budget is the context ParallelComp's answer reads (`rag-bm25`: its
kept chunks), the whole window (`rag-bm25-window`), or a fixed number of tokens (the sweep
`rag-bm25-1k` to `rag-bm25-6k`). Retrieval time (splitting, indexing, ranking) counts in the
prefill time, as it would for a new corpus. Every budget ranks the same nodes for an item, so the
methods of one process share the ranking of the last few items (`RANKINGS`); each method still
reports the retrieval time that its ranking took.

bm25s selects its top nodes with JAX where JAX is installed, and JAX takes three quarters of a
GPU's memory when it starts there: this module keeps JAX on the CPU (`JAX_PLATFORMS`, unless the
environment sets it) before bm25s is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import Stemmer
import torch
from llama_index.core import Document
from llama_index.core.node_parser import SentenceSplitter
from llama_index.retrievers.bm25 import BM25Retriever

from parallelcomp_llm import ParallelCompEngine

from .baselines import FullPromptMethod
from .device_costs import freeing_memory_on_failure
from .items import Item, MethodOutput

NODE_TOKENS = 128
"""Tokens per node: OP-RAG's chunk size, a few RULER needles or a short paragraph."""
BUDGETS = {"kept": None, "window": None, "1k": 1000, "2k": 2000, "4k": 4000, "6k": 6000}
"""The methods' context budgets: ParallelComp's kept chunks, the trained window, fixed sizes."""


@dataclass(frozen=True)
class Ranking:
    """An item's nodes from best to worst for its question: (position in the document, text,
    tokens) each; and how long splitting, indexing and ranking took."""

    nodes: list[tuple[int, str, int]]
    seconds: float


class RankingCache:
    """The rankings of the last `size` items, by model and item (`get` ranks the others)."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str, str], Ranking] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str], rank: Callable[[], Ranking]) -> Ranking:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        ranking = rank()
        with self._lock:
            self._entries[key] = ranking
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return ranking


RANKINGS = RankingCache()
"""Shared by every `RetrievalMethod` of the process."""


@dataclass(frozen=True)
class Retrieved:
    """The nodes put back in document order, how many the context had, and the seconds its
    ranking took."""

    text: str
    nodes_kept: int
    nodes_total: int
    ranking_seconds: float


class RetrievalMethod:
    """BM25 retrieval of nodes within a token budget, then the model over them (module doc)."""

    def __init__(self, name: str, engine: ParallelCompEngine, *, budget: str) -> None:
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")
        if budget == "kept" and not isinstance(engine.config.keep_chunks, int):
            raise ValueError(
                "the 'kept' budget is keep_chunks chunks of chunk_tokens: it needs keep_chunks as "
                f"a count, not the fraction {engine.config.keep_chunks}"
            )
        self.name = name
        self.engine = engine
        self.budget = budget
        self.reader = FullPromptMethod(name, engine)
        self.splitter = SentenceSplitter(
            chunk_size=NODE_TOKENS, chunk_overlap=0, tokenizer=engine.prompts.encode
        )

    def budget_tokens(self, item: Item) -> int:
        """Context tokens the answer may read for `item`: at most what the trained window leaves
        after the template, the question and the answer."""
        prompts = self.engine.prompts
        template = len(prompts.prefix_ids) + len(prompts.question_ids(item.question))
        room = self.engine.native_window - template - item.max_new_tokens
        fixed = BUDGETS[self.budget]
        if self.budget == "kept":
            config = self.engine.config
            fixed = config.keep_chunks * config.chunk_tokens
        return room if fixed is None else min(fixed, room)

    def rank(self, item: Item) -> Ranking:
        """`item`'s nodes ranked by BM25 for its question."""
        started = time.perf_counter()
        nodes = self.splitter.get_nodes_from_documents([Document(text=item.context)])
        retriever = BM25Retriever.from_defaults(
            nodes=nodes,
            similarity_top_k=len(nodes),
            stemmer=Stemmer.Stemmer("english"),
            language="english",
        )
        position = {node.node_id: index for index, node in enumerate(nodes)}
        ranked = []
        for scored in retriever.retrieve(item.question):
            text = scored.node.get_content()
            ranked.append(
                (position[scored.node.node_id], text, len(self.engine.prompts.encode(text)))
            )
        return Ranking(ranked, time.perf_counter() - started)

    def retrieve(self, item: Item) -> Retrieved:
        """The best nodes for `item.question` within `budget_tokens`, in document order."""
        key = (self.engine.model_key, item.context, item.question)
        ranking = RANKINGS.get(key, lambda: self.rank(item))
        room = self.budget_tokens(item)
        chosen = []
        for position, text, size in ranking.nodes:
            if size <= room:
                chosen.append((position, text))
                room -= size
        text = "\n".join(text for _, text in sorted(chosen))
        return Retrieved(text, len(chosen), len(ranking.nodes), ranking.seconds)

    def answer(self, item: Item) -> MethodOutput:
        started = time.perf_counter()
        retrieved = self.retrieve(item)
        retrieval_seconds = retrieved.ranking_seconds + time.perf_counter() - started
        prompts = self.engine.prompts
        token_ids = [
            *prompts.prefix_ids,
            *prompts.encode(retrieved.text),
            *prompts.question_ids(item.question),
        ]
        with freeing_memory_on_failure(self.engine.device), torch.inference_mode():
            output = self.reader.answer_prompt(token_ids, item.max_new_tokens)
        return MethodOutput(
            text=output.text,
            prompt_tokens=output.prompt_tokens,
            prefill_seconds=retrieval_seconds + output.prefill_seconds,
            peak_memory_bytes=output.peak_memory_bytes,
            kv_kept=output.kv_kept,
            chunks_kept=retrieved.nodes_kept,
            chunks_total=retrieved.nodes_total,
        )
