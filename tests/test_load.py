"""Load test: 64 concurrent requests through the LangChain chat model and the LlamaIndex LLM against
one engine; every answer equals the same request made alone."""

from __future__ import annotations

import asyncio

from langchain_parallelcomp import ChatParallelComp
from llama_index.core.llms import ChatMessage
from llama_index.llms.parallelcomp import ParallelCompLLM

from parallelcomp_llm.testing import text_of_tokens, tiny_engine

CORPORA = [[text_of_tokens(300, seed=s + i) for i in range(3)] for s in range(4)]


def requests() -> list[tuple[str, int, str, int]]:
    """64 requests: (framework, corpus index or -1 for none, question, sampling seed)."""
    made = []
    for number in range(64):
        framework = "langchain" if number % 2 == 0 else "llama_index"
        made.append((framework, number % 5 - 1, f"Question {number}: what comes next?", number))
    return made


def test_64_concurrent_requests_each_get_the_answer_they_get_alone():
    engine = tiny_engine("qwen2", keep_chunks=2, kv_budget=128, max_waiting_requests=64)
    chat = ChatParallelComp(engine=engine, max_tokens=12)
    llm = ParallelCompLLM(engine=engine, max_tokens=12)

    async def ask(framework: str, corpus: int, question: str, seed: int) -> str:
        options = {"temperature": 1.0, "seed": seed}
        if corpus >= 0:
            options["context"] = CORPORA[corpus]
        if framework == "langchain":
            return (await chat.ainvoke(question, **options)).content
        if corpus >= 0:
            return (await llm.acomplete(question, **options)).text
        message = ChatMessage(role="user", content=question)
        return (await llm.achat([message], **options)).message.content

    async def everyone() -> list[str]:
        return await asyncio.gather(*(ask(*request) for request in requests()))

    together = asyncio.run(everyone())
    alone = [asyncio.run(ask(*request)) for request in requests()]
    assert together == alone
    assert len(set(together)) > 8
    assert not engine.busy
