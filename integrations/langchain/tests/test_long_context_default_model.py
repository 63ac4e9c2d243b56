"""With the real default model (SmolLM2-135M-Instruct, trained window 8,192 tokens): a pass key found
in a corpus of three trained windows (about 24,600 tokens) through `create_long_context_chain` and
through LangChain's own pipelines with the corpus in the prompt: `create_stuff_documents_chain`,
`create_retrieval_chain` and `create_agent` with `SummarizationMiddleware`.

Every path hands the engine the same request (the corpus as one document, the pass-key question),
so one engine, kept for the module, encodes the corpus once: the first test pays the prefill, the
others reuse the encoded chunks (`context_cache_host_fraction` leaves room for them).
"""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware
from langchain_classic.chains import create_retrieval_chain
from langchain_classic.chains.combine_documents import create_stuff_documents_chain
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_parallelcomp import ChatParallelComp, create_long_context_chain

from parallelcomp_llm import ParallelCompEngine
from parallelcomp_llm.testing import PASSKEY_QUESTION, first_integer, passkey_haystack

pytestmark = pytest.mark.default_model
KEY = 68217
PROMPT = ChatPromptTemplate.from_messages([("human", "{context}\n\n{input}")])


@pytest.fixture(scope="module")
def chat() -> ChatParallelComp:
    engine = ParallelCompEngine.default(context_cache_host_fraction=0.4)
    return ChatParallelComp(engine=engine, max_tokens=16)


@pytest.fixture(scope="module")
def corpus(chat) -> list[Document]:
    """The pass key halfway through three trained windows of text, as one document."""
    haystack = passkey_haystack(3 * chat.native_window, 0.5, KEY, chat.get_num_tokens).strip()
    assert 24_000 < chat.get_num_tokens(haystack) <= 3 * chat.native_window
    return [Document(page_content=haystack)]


def test_create_long_context_chain_finds_the_pass_key(chat, corpus):
    result = create_long_context_chain(chat).invoke(
        {"documents": corpus, "input": PASSKEY_QUESTION}
    )
    assert first_integer(result["answer"]) == KEY, result["answer"]
    assert [d.page_content for d in result["context"]] == [corpus[0].page_content]
    assert 0 < result["context"][0].metadata["relevance"] <= 1


def test_create_stuff_documents_chain_finds_the_pass_key(chat, corpus):
    answer = create_stuff_documents_chain(chat, PROMPT).invoke(
        {"context": corpus, "input": PASSKEY_QUESTION}
    )
    assert first_integer(answer) == KEY, answer


def test_create_retrieval_chain_finds_the_pass_key(chat, corpus, whole_corpus_retriever):
    chain = create_retrieval_chain(
        whole_corpus_retriever(corpus), create_stuff_documents_chain(chat, PROMPT)
    )
    result = chain.invoke({"input": PASSKEY_QUESTION})
    assert first_integer(result["answer"]) == KEY, result["answer"]


def test_create_agent_with_summarization_finds_the_pass_key(chat, corpus):
    agent = create_agent(
        chat, tools=[], middleware=[SummarizationMiddleware(model=chat, trigger=("fraction", 0.8))]
    )
    message = HumanMessage(corpus[0].page_content + "\n\n" + PASSKEY_QUESTION)
    answer = agent.invoke({"messages": [message]})["messages"][-1]
    assert first_integer(answer.text) == KEY, answer.text
    assert answer.response_metadata["chunks_total"] > 3
