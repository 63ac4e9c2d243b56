"""`create_long_context_chain`: the answer and the documents the engine kept, with their relevance,
under `create_retrieval_chain`'s keys, every way a Runnable runs."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langchain_parallelcomp import ChatParallelComp, ParallelCompLLM, create_long_context_chain

from parallelcomp_llm import Answer, ContextTooLongError, InvalidInputError
from parallelcomp_llm.testing import count_prefills, tiny_engine

QUESTION = "Which document mentions the key?"


@pytest.fixture(scope="module")
def engine():
    """Three documents of one chunk each, two of them kept."""
    return tiny_engine("llama", keep_chunks=2)


@pytest.fixture(params=[ParallelCompLLM, ChatParallelComp])
def model(request, engine):
    return request.param(engine=engine, max_tokens=16)


@pytest.fixture
def corpus(documents) -> list[Document]:
    return [
        Document(page_content=d, metadata={"i": i}, id=f"d{i}") for i, d in enumerate(documents)
    ]


def kept(corpus: list[Document], answer: Answer) -> list[Document]:
    """The corpus's kept documents (one chunk each), most relevant first, with their relevance."""
    chunks = sorted((c for c in answer.stats.chunks if c.kept), key=lambda c: -c.relevance)
    return [
        Document(
            page_content=corpus[c.documents[0]].page_content,
            metadata={**corpus[c.documents[0]].metadata, "relevance": c.relevance},
            id=corpus[c.documents[0]].id,
        )
        for c in chunks
    ]


async def test_the_chain_returns_the_answer_and_the_kept_documents(
    model, engine, documents, corpus
):
    answer = engine.generate(documents, QUESTION, max_new_tokens=16)
    assert [c.documents for c in answer.stats.chunks] == [(0,), (1,), (2,)]
    assert answer.stats.chunks_kept == 2
    expected = {"answer": answer.text, "context": kept(corpus, answer)}
    best, second = (d.metadata["relevance"] for d in expected["context"])
    assert 0 < second <= best < 1
    chain = create_long_context_chain(model)
    inputs = {"documents": corpus, "input": QUESTION}
    assert chain.invoke(inputs) == expected
    texts = [Document(page_content=d) for d in documents]
    assert chain.invoke({"documents": documents, "question": QUESTION}) == {
        "answer": answer.text,
        "context": kept(texts, answer),
    }
    assert await chain.ainvoke(inputs) == expected
    other = {"documents": corpus[:1], "input": QUESTION}
    one = engine.generate(documents[:1], QUESTION, max_new_tokens=16)
    expected_other = {"answer": one.text, "context": kept(corpus[:1], one)}
    assert chain.batch([inputs, other]) == [expected, expected_other]
    assert await chain.abatch([inputs, other]) == [expected, expected_other]


async def test_the_chain_streams_the_answer_then_the_documents(model, engine, documents, corpus):
    answer = engine.generate(documents, QUESTION, max_new_tokens=16)
    chain = create_long_context_chain(model)
    inputs = {"documents": corpus, "input": QUESTION}
    for chunks in (list(chain.stream(inputs)), [c async for c in chain.astream(inputs)]):
        *deltas, last = chunks
        assert all(set(delta) == {"answer"} for delta in deltas)
        assert [d["answer"] for d in deltas if d["answer"]] == list(
            engine.stream(documents, QUESTION, max_new_tokens=16)
        )
        assert last == {"context": kept(corpus, answer)}


def test_the_chat_history_is_read_before_the_question(engine, documents, corpus):
    chat = ChatParallelComp(engine=engine, max_tokens=16)
    history = [HumanMessage("Hi"), AIMessage("Hello.")]
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": QUESTION},
    ]
    answer = engine.chat(turns, context=documents, max_new_tokens=16)
    result = create_long_context_chain(chat).invoke(
        {"documents": corpus, "input": QUESTION, "chat_history": history}
    )
    assert result["answer"] == answer.text
    # The earlier turns are documents after the corpus; only the corpus's are returned.
    assert max(d for c in answer.stats.chunks for d in c.documents) > len(corpus) - 1
    assert {d.id for d in result["context"]} <= {d.id for d in corpus}
    assert {d.id for d in result["context"]} == {
        corpus[d].id for d in answer.stats.kept_documents if d < len(corpus)
    }


def test_the_same_documents_are_encoded_once_across_chain_calls(documents):
    engine = tiny_engine("llama", keep_chunks=2)
    prefills = count_prefills(engine.model)
    chain = create_long_context_chain(ParallelCompLLM(engine=engine, max_tokens=8))
    first = chain.invoke({"documents": documents, "input": QUESTION})
    encoded = len(prefills)
    second = chain.invoke({"documents": list(documents), "input": "Anything else?"})
    assert encoded >= 1 and len(prefills) == encoded
    assert first["answer"] == engine.generate(documents, QUESTION, max_new_tokens=8).text
    assert second["answer"] == engine.generate(documents, "Anything else?", max_new_tokens=8).text


@pytest.mark.parametrize(
    "inputs, error, match",
    [
        ({"input": QUESTION}, InvalidInputError, "documents"),
        ({"documents": ["text"]}, InvalidInputError, '"input"'),
        (
            {"documents": ["text"], "input": QUESTION, "question": QUESTION},
            InvalidInputError,
            "not both",
        ),
        ({"documents": ["text"], "input": " "}, InvalidInputError, "question is empty"),
        ({"documents": [], "input": QUESTION}, InvalidInputError, "context is empty"),
        ({"documents": ["a" * 600], "input": QUESTION}, ContextTooLongError, "max_context_tokens"),
    ],
)
async def test_bad_input_raises_the_engine_errors(inputs, error, match):
    chain = create_long_context_chain(
        ParallelCompLLM(engine=tiny_engine("llama", max_context_tokens=500), max_tokens=8)
    )
    with pytest.raises(error, match=match):
        chain.invoke(inputs)
    with pytest.raises(error, match=match):
        await chain.ainvoke(inputs)
    with pytest.raises(TypeError):
        create_long_context_chain("not a model")
