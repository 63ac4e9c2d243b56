"""Fixtures: tiny random engines (trained windows of 512 and 2,048 tokens), the LLM over the first,
nodes, a small real embedding, and LlamaIndex's own query and chat engines as `pipeline`s, with
the answers of every LLM call they make."""

from __future__ import annotations

import string
from collections.abc import Callable
from functools import partial

import pytest
from llama_index.core import Settings
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager, EventPayload, LlamaDebugHandler
from llama_index.core.indices.base import BaseIndex
from llama_index.core.schema import TextNode
from llama_index.llms.parallelcomp import ParallelCompLLM

from parallelcomp_llm import Answer
from parallelcomp_llm.testing import text_of_tokens, tiny_engine

RESPONSE_MODES = ("compact", "refine", "tree_summarize", "simple_summarize")
CHAT_MODES = ("simple", "context", "condense_plus_context")
PIPELINES = [f"query:{mode}" for mode in RESPONSE_MODES] + [f"chat:{mode}" for mode in CHAT_MODES]
Ask = Callable[[BaseIndex, ParallelCompLLM, str, str], str]


@pytest.fixture(scope="module")
def engine():
    """Keeps 2 chunks; chunks hold about 426 tokens; context is refused above 5,000 tokens."""
    return tiny_engine("llama", keep_chunks=2, max_context_tokens=5000)


@pytest.fixture(scope="module")
def wide_engine():
    """Room for LlamaIndex's prompt templates, whose system prompts and questions run to a few
    hundred byte tokens: a 2,048-token window, questions up to 200 tokens, chunks of half the
    room (about 900 tokens); context is refused above 20,000 tokens."""
    return tiny_engine(
        "llama",
        window=2048,
        question_reserve_tokens=200,
        chunk_room_fraction=0.5,
        keep_chunks=2,
        max_context_tokens=20_000,
    )


@pytest.fixture
def llm(engine) -> ParallelCompLLM:
    return ParallelCompLLM(engine=engine)


@pytest.fixture
def nodes() -> list[TextNode]:
    """Two small nodes (packed into one chunk), then three nodes of a chunk each: 4 chunks, 1,100
    tokens, more than twice the trained window."""
    sizes = [100, 100, 300, 300, 300]
    return [
        TextNode(text=text_of_tokens(size, seed=index), id_=f"node-{index}")
        for index, size in enumerate(sizes)
    ]


def ask(pipeline: str, index: BaseIndex, llm: ParallelCompLLM, corpus: str, question: str) -> str:
    """The answer text of `index.as_query_engine(response_mode=...)` or `index.as_chat_engine(
    chat_mode=...)` (`pipeline` is "query:MODE" or "chat:MODE") to `question` over `corpus`."""
    kind, mode = pipeline.split(":")
    if kind == "query":
        return str(index.as_query_engine(llm=llm, response_mode=mode).query(question))
    chat_engine = index.as_chat_engine(chat_mode=mode, llm=llm)
    # A simple chat engine retrieves nothing: the user pastes the corpus into the message.
    return str(chat_engine.chat(f"{corpus}\n\n{question}" if mode == "simple" else question))


@pytest.fixture(params=PIPELINES)
def pipeline(request) -> Ask:
    """Each of LlamaIndex's query engines by response mode and chat engines by chat mode."""
    return partial(ask, request.param)


@pytest.fixture
def llm_answers(monkeypatch) -> Callable[[], list[Answer]]:
    """The engine's answers of the LLM calls LlamaIndex has made so far in the test, in order,
    from the callback events (LlamaIndex's query and chat engines give their synthesizers
    `Settings.callback_manager`, which replaces the LLM's own)."""
    debug = LlamaDebugHandler(print_trace_on_end=False)
    monkeypatch.setattr(Settings, "callback_manager", CallbackManager([debug]))

    def answers() -> list[Answer]:
        ends = [end.payload for _, end in debug.get_llm_inputs_outputs()]
        return [
            (payload.get(EventPayload.COMPLETION) or payload[EventPayload.RESPONSE]).raw["answer"]
            for payload in ends
        ]

    return answers


class LetterCounts(BaseEmbedding):
    """A small real embedding: how often each letter occurs (no model, no download)."""

    def _get_text_embedding(self, text: str) -> list[float]:
        return [float(text.lower().count(letter)) + 1.0 for letter in string.ascii_lowercase]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


@pytest.fixture
def letter_counts() -> LetterCounts:
    return LetterCounts()
