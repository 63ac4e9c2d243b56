"""Fixtures: a tiny random engine (fast, no download), documents for it, a callback recorder and an
event-loop ticker. Async tests run in pytest-asyncio's auto mode (set in the root pyproject), as
LangChain's standard suites expect."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.outputs import LLMResult
from langchain_core.retrievers import BaseRetriever

from parallelcomp_llm import ParallelCompEngine
from parallelcomp_llm.testing import text_of_tokens, tiny_engine


@pytest.fixture(scope="session")
def engine() -> ParallelCompEngine:
    """One tiny Llama engine (trained window 512, chunks of about 426 tokens)."""
    return tiny_engine("llama")


@pytest.fixture(scope="session")
def documents() -> list[str]:
    """Three documents of 300 tokens each: three chunks for the tiny engine."""
    return [text_of_tokens(300, seed) for seed in range(3)]


class Recorder(BaseCallbackHandler):
    """Records the tokens and the results LangChain hands to callbacks."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.results: list[LLMResult] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.results.append(response)


async def ticks_while(awaitable: Any) -> tuple[Any, int]:
    """Await `awaitable` while a coroutine ticks every millisecond; return its result and ticks."""
    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(tick())
    try:
        return await awaitable, ticks
    finally:
        done.set()
        await ticker


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def ticker() -> Callable[[Awaitable[Any]], Awaitable[tuple[Any, int]]]:
    return ticks_while


class AllDocuments(BaseRetriever):
    """Retrieves every document, as a retrieval chain over a whole corpus would."""

    documents: list[Document]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return self.documents


@pytest.fixture(scope="session")
def whole_corpus_retriever() -> Callable[[list[Document]], BaseRetriever]:
    """A retriever that returns every document of a corpus (a real `BaseRetriever`)."""
    return lambda corpus: AllDocuments(documents=corpus)
