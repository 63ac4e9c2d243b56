"""Long context as structured context: `context=` through `bind` or per call; `Document` titles and
sources shown to the model; the context identified by digest in LangChain's invocation params and
LLM cache keys."""

from __future__ import annotations

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.exceptions import ContextOverflowError
from langchain_parallelcomp import ChatParallelComp, ParallelCompLLM

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
    text = llm.bind(context=documents).invoke(QUESTION, {"callbacks": [recorder]})
    assert text == answer.text
    info = recorder.results[0].generations[0][0].generation_info
    assert info["chunks_total"] == 3
    kept = [c.documents[0] for c in answer.stats.chunks if c.kept]
    assert info["kept_documents"] == answer.stats.kept_documents == kept
    assert info["kept_document_relevance"] == [c.relevance for c in answer.stats.chunks if c.kept]


def test_document_title_and_source_are_shown_before_the_text(model, engine, documents):
    titled = [
        Document(page_content=d, metadata={"title": f"Report {i}", "source": f"r{i}.txt", "p": 2})
        for i, d in enumerate(documents)
    ]
    shown = [f"Title: Report {i}\nSource: r{i}.txt\n\n{d}" for i, d in enumerate(documents)]
    expected = engine.generate(shown, QUESTION, max_new_tokens=16).text
    assert text_of(model.invoke(QUESTION, context=titled)) == expected
    assert text_of(model.bind(context=titled).batch([QUESTION])[0]) == expected
    source_only = Document(page_content=documents[0], metadata={"source": "a.txt", "title": ""})
    assert (
        text_of(model.invoke(QUESTION, context=source_only))
        == engine.generate(f"Source: a.txt\n\n{documents[0]}", QUESTION, max_new_tokens=16).text
    )


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


class Params(BaseCallbackHandler):
    """Records the invocation params LangChain reports at the start of each model run."""

    def __init__(self) -> None:
        self.params: list[dict] = []

    def on_llm_start(self, serialized, prompts, **kwargs) -> None:
        self.params.append(kwargs["invocation_params"])

    def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.params.append(kwargs["invocation_params"])


class KeyedCache(InMemoryCache):
    """LangChain's in-memory LLM cache, recording the cache key of every answer it stores."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    def update(self, prompt: str, llm_string: str, return_val) -> None:
        self.keys.append(llm_string)
        super().update(prompt, llm_string, return_val)


@pytest.mark.parametrize("model_class", [ParallelCompLLM, ChatParallelComp])
async def test_a_context_over_the_limit_raises_and_is_traced_by_digest(model_class):
    corpus = [text_of_tokens(10_000, seed) for seed in range(10)]  # 100,000 characters
    model = model_class(engine=tiny_engine("llama", max_context_tokens=1000), max_tokens=8)
    params = Params()
    bound = model.bind(context=corpus).with_config(callbacks=[params])
    for call in (bound.invoke, lambda q: list(bound.stream(q))):
        with pytest.raises(
            ContextTooLongError, match="more than max_context_tokens=1000"
        ) as raised:
            call(QUESTION)
        assert isinstance(raised.value, ContextOverflowError)
    with pytest.raises(ContextTooLongError):
        await bound.ainvoke(QUESTION)
    assert len(params.params) == 3
    for recorded in params.params:
        assert recorded["context"].startswith("sha256:")
        assert len(str(recorded)) < 2_000


@pytest.mark.parametrize("model_class", [ParallelCompLLM, ChatParallelComp])
def test_the_llm_cache_keys_answers_by_their_context(model_class, engine, documents):
    cache = KeyedCache()
    model = model_class(engine=engine, max_tokens=8, cache=cache)
    first = model.bind(context=documents[:2]).invoke(QUESTION)
    second = model.bind(context=documents[1:]).invoke(QUESTION)
    assert text_of(first) == engine.generate(documents[:2], QUESTION, max_new_tokens=8).text
    assert text_of(second) == engine.generate(documents[1:], QUESTION, max_new_tokens=8).text
    assert len(cache.keys) == 2 and cache.keys[0] != cache.keys[1]
    assert all(len(key) < 2_000 for key in cache.keys)
    prefills = count_prefills(engine.model)
    assert text_of(model.invoke(QUESTION, context=list(documents[1:]))) == text_of(second)
    assert len(cache.keys) == 2 and prefills == []  # answered from the cache
