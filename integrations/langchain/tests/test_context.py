"""Long context as structured context: `context=` through `bind`; `create_long_context_chain`."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_parallelcomp import ChatParallelComp, ParallelCompLLM, create_long_context_chain

from parallelcomp_llm import ContextTooLongError, InvalidInputError
from parallelcomp_llm.testing import count_prefills, text_of_tokens, tiny_engine

QUESTION = "Which document mentions the key?"


@pytest.fixture(params=[ParallelCompLLM, ChatParallelComp])
def model(request, engine):
    return request.param(engine=engine, max_tokens=16)


def text_of(output) -> str:
    return output if isinstance(output, str) else output.content


def test_bind_context_answers_over_the_documents(model, engine, documents):
    answer = engine.generate(documents, QUESTION, max_new_tokens=16)
    assert text_of(model.bind(context=documents).invoke(QUESTION)) == answer.text
    as_documents = [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(documents)]
    assert text_of(model.invoke(QUESTION, context=as_documents)) == answer.text
    streamed = [text_of(c) for c in model.bind(context=documents).stream(QUESTION)]
    assert [s for s in streamed if s] == list(engine.stream(documents, QUESTION, max_new_tokens=16))


def test_single_text_context(model, engine):
    text = text_of_tokens(700, seed=5)
    assert (
        text_of(model.invoke(QUESTION, context=text))
        == engine.generate(text, QUESTION, max_new_tokens=16).text
    )


def test_document_boundaries_are_chunk_boundaries(engine, recorder):
    documents = [text_of_tokens(250, seed) for seed in range(3)]  # joined: 2 chunks; apart: 3
    llm = ParallelCompLLM(engine=engine, max_tokens=16)
    answer = engine.generate(documents, QUESTION, max_new_tokens=16)
    assert [c.documents for c in answer.stats.chunks] == [(0,), (1,), (2,)]
    chain = create_long_context_chain(llm)
    text = chain.invoke({"documents": documents, "question": QUESTION}, {"callbacks": [recorder]})
    assert text == answer.text
    info = recorder.results[0].generations[0][0].generation_info
    assert info["chunks_total"] == 3
    assert info["kept_documents"] == answer.stats.kept_documents


async def test_chain_runs_every_way(model, engine, documents):
    chain = create_long_context_chain(model)
    inputs = {"documents": [Document(page_content=d) for d in documents], "question": QUESTION}
    expected = engine.generate(documents, QUESTION, max_new_tokens=16).text
    assert chain.invoke(inputs) == expected
    assert "".join(chain.stream(inputs)) == expected
    assert await chain.ainvoke(inputs) == expected
    assert "".join([s async for s in chain.astream(inputs)]) == expected
    other = {"documents": documents[:1], "question": QUESTION}
    expected_other = engine.generate(documents[:1], QUESTION, max_new_tokens=16).text
    assert chain.batch([inputs, other]) == [expected, expected_other]
    assert await chain.abatch([inputs, other]) == [expected, expected_other]


@pytest.mark.parametrize(
    "context, match",
    [
        ([], "context is empty"),
        (["", "  "], "context is empty"),
        ([Document(page_content=" ")], "context is empty"),
        (["fine", 3], "document 1 is a int"),
        (42, "context must be a string"),
        (b"bytes", "context must be a string"),
    ],
)
async def test_bad_context_raises_the_engine_errors(model, context, match):
    with pytest.raises(InvalidInputError, match=match):
        model.invoke(QUESTION, context=context)
    with pytest.raises(InvalidInputError, match=match):
        await model.ainvoke(QUESTION, context=context)
    with pytest.raises(InvalidInputError, match=match):
        list(model.stream(QUESTION, context=context))


def test_bad_chain_input_and_too_long_context(documents):
    llm = ParallelCompLLM(engine=tiny_engine("llama", max_context_tokens=500), max_tokens=8)
    chain = create_long_context_chain(llm)
    with pytest.raises(InvalidInputError, match="documents"):
        chain.invoke({"question": QUESTION})
    with pytest.raises(InvalidInputError, match="question is empty"):
        chain.invoke({"documents": documents[:1], "question": " "})
    with pytest.raises(ContextTooLongError):
        chain.invoke({"documents": documents, "question": QUESTION})
    with pytest.raises(TypeError):
        create_long_context_chain("not a model")


def test_usage_counts_the_whole_context(engine, documents):
    chat = ChatParallelComp(engine=engine, max_tokens=16)
    message = chat.invoke(QUESTION, context=documents)
    answer = engine.generate(documents, QUESTION, max_new_tokens=16)
    supplied = sum(engine.count_tokens(d) for d in documents) + len(
        engine.prompts.question_ids(QUESTION)
    )
    new = len(answer.token_ids)
    assert message.usage_metadata == {
        "input_tokens": supplied,
        "output_tokens": new,
        "total_tokens": supplied + new,
    }
    assert message.response_metadata["chunks_total"] == 3


def test_questions_over_one_bound_context_run_as_one_engine_batch(documents):
    engine = tiny_engine("llama", keep_chunks=2, context_cache_host_fraction=0.0)
    questions = [QUESTION, "Who wrote the second one?"]
    expected = [engine.generate(documents, q, max_new_tokens=16) for q in questions]
    llm = ParallelCompLLM(engine=engine, max_tokens=16).bind(context=documents)
    prefills = count_prefills(engine.model)
    assert llm.batch(questions) == [a.text for a in expected]
    assert len(prefills) == 1


def test_the_same_documents_are_encoded_once_across_chain_calls(documents):
    engine = tiny_engine("llama", keep_chunks=2)
    prefills = count_prefills(engine.model)
    chain = create_long_context_chain(ParallelCompLLM(engine=engine, max_tokens=8))
    first = chain.invoke({"documents": documents, "question": QUESTION})
    encoded = len(prefills)
    second = chain.invoke({"documents": list(documents), "question": "Anything else?"})
    assert encoded >= 1 and len(prefills) == encoded
    assert first == engine.generate(documents, QUESTION, max_new_tokens=8).text
    assert second == engine.generate(documents, "Anything else?", max_new_tokens=8).text
