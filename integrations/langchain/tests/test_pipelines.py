"""LangChain's own pipelines over `ChatParallelComp`, with the corpus in the prompt (three trained
windows of the tiny engine): `create_stuff_documents_chain`, `create_retrieval_chain` and
`create_agent` with `SummarizationMiddleware`. Each answers as the engine answers the same chat,
and a corpus over `max_context_tokens` raises `ContextTooLongError` to the caller."""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware
from langchain_classic.chains import create_retrieval_chain
from langchain_classic.chains.combine_documents import create_stuff_documents_chain
from langchain_core.documents import Document
from langchain_core.exceptions import ContextOverflowError
from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_parallelcomp import ChatParallelComp

from parallelcomp_llm import ContextTooLongError
from parallelcomp_llm.testing import text_of_tokens, tiny_engine

SYSTEM = "Answer the question from these documents.\n\n{context}"
QUESTION = "Which key?"
PROMPT = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{input}")])
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def corpus() -> list[Document]:
    """Three documents of 512 tokens: three times the tiny model's trained window."""
    return [Document(page_content=text_of_tokens(512, seed)) for seed in range(3)]


def corpus_text(corpus: list[Document]) -> str:
    return "\n\n".join(document.page_content for document in corpus)


def stuff_chain(chat: ChatParallelComp):
    return create_stuff_documents_chain(chat, PROMPT)


def retrieval_chain(chat: ChatParallelComp, retriever: BaseRetriever):
    return create_retrieval_chain(retriever, stuff_chain(chat))


def agent(chat: ChatParallelComp):
    summarization = SummarizationMiddleware(model=chat, trigger=("fraction", 0.8))
    return create_agent(chat, tools=[], middleware=[summarization])


def expected_chain_answer(engine, corpus: list[Document]):
    turns = [
        {"role": "system", "content": SYSTEM.format(context=corpus_text(corpus))},
        {"role": "user", "content": QUESTION},
    ]
    answer = engine.chat(turns, max_new_tokens=MAX_TOKENS)
    assert answer.stats.chunks_total >= 3  # answered with ParallelComp, not truncated
    assert answer.text
    return answer


def test_stuff_documents_chain_answers_over_a_corpus_in_its_prompt(engine, corpus):
    chat = ChatParallelComp(engine=engine, max_tokens=MAX_TOKENS)
    assert engine.count_tokens(corpus_text(corpus)) > 3 * chat.native_window - 1
    answer = stuff_chain(chat).invoke({"context": corpus, "input": QUESTION})
    assert answer == expected_chain_answer(engine, corpus).text


async def test_retrieval_chain_answers_over_every_retrieved_document(
    engine, corpus, whole_corpus_retriever
):
    chat = ChatParallelComp(engine=engine, max_tokens=MAX_TOKENS)
    expected = expected_chain_answer(engine, corpus).text
    result = retrieval_chain(chat, whole_corpus_retriever(corpus)).invoke({"input": QUESTION})
    assert result["answer"] == expected
    assert result["context"] == corpus
    assert (
        await retrieval_chain(chat, whole_corpus_retriever(corpus)).ainvoke({"input": QUESTION})
    )["answer"] == expected


async def test_agent_with_summarization_answers_a_long_message(engine, corpus):
    chat = ChatParallelComp(engine=engine, max_tokens=MAX_TOKENS)
    text = corpus_text(corpus) + "\n\n" + QUESTION
    expected = engine.chat([{"role": "user", "content": text}], max_new_tokens=MAX_TOKENS)
    assert expected.stats.chunks_total >= 3 and expected.text
    # 0.8 of the context window the engine declares is far away: no summary, the whole message.
    messages = agent(chat).invoke({"messages": [HumanMessage(text)]})["messages"]
    assert [message.type for message in messages] == ["human", "ai"]
    assert messages[-1].content == expected.text
    assert messages[-1].response_metadata["chunks_total"] == expected.stats.chunks_total
    messages = (await agent(chat).ainvoke({"messages": [HumanMessage(text)]}))["messages"]
    assert messages[-1].content == expected.text


@pytest.mark.parametrize("path", ["stuff", "retrieval", "agent"])
async def test_a_corpus_over_the_limit_raises_to_the_caller(corpus, path, whole_corpus_retriever):
    chat = ChatParallelComp(engine=tiny_engine("llama", max_context_tokens=1000), max_tokens=8)
    assert chat.profile["max_input_tokens"] == 1000
    runs = {
        "stuff": (stuff_chain(chat), {"context": corpus, "input": QUESTION}),
        "retrieval": (retrieval_chain(chat, whole_corpus_retriever(corpus)), {"input": QUESTION}),
        "agent": (
            agent(chat),
            {"messages": [HumanMessage(corpus_text(corpus) + "\n\n" + QUESTION)]},
        ),
    }
    runnable, inputs = runs[path]
    with pytest.raises(ContextTooLongError, match="more than max_context_tokens=1000") as raised:
        runnable.invoke(inputs)
    assert isinstance(raised.value, ContextOverflowError)
    with pytest.raises(ContextTooLongError, match="more than max_context_tokens=1000"):
        await runnable.ainvoke(inputs)
