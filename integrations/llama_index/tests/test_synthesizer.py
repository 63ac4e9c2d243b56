"""`ParallelCompSynthesizer` answers over all the nodes it is given in one engine call, composes with
LlamaIndex's query engines, retrievers and postprocessors, and cites the kept nodes, scored."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import SummaryIndex, VectorStoreIndex
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.llms.parallelcomp import ParallelCompLLM, ParallelCompSynthesizer
from llama_index.llms.parallelcomp.synthesizer import DEFAULT_TEXT_QA_TEMPLATE

from parallelcomp_llm import Answer, ContextTooLongError, InvalidInputError
from parallelcomp_llm.testing import text_of_tokens

QUESTION = "Which part matters?"


def _sources(response) -> list[tuple[str, float]]:
    return [(source.node.node_id, source.score) for source in response.source_nodes]


def _kept(nodes, answer: Answer) -> list[tuple[str, float]]:
    """(node id, relevance) of the nodes of the kept chunks, most relevant first."""
    kept = sorted(
        (-chunk.relevance, document)
        for chunk in answer.stats.chunks
        if chunk.kept
        for document in chunk.documents
    )
    return [(nodes[document].node_id, -negated) for negated, document in kept]


def test_a_query_engine_with_it_answers_over_every_retrieved_node(engine, nodes, llm_answers):
    llm = ParallelCompLLM(engine=engine)
    query_engine = SummaryIndex(nodes).as_query_engine(
        llm=llm, response_synthesizer=ParallelCompSynthesizer(llm=llm)
    )

    response = query_engine.query(QUESTION)

    expected = engine.generate([node.text for node in nodes], QUESTION)
    assert [answer.token_ids for answer in llm_answers()] == [expected.token_ids]
    assert isinstance(response, Response) and response.response == expected.text
    assert expected.stats.chunks_total == 4 and expected.stats.chunks_kept == 2
    assert _sources(response) == _kept(nodes, expected)
    assert all(0.0 < score < 1.0 for _, score in _sources(response))
    assert response.metadata == {node_id: {} for node_id, _ in _sources(response)}


def test_it_composes_with_a_retriever_and_postprocessors(engine, nodes, letter_counts, llm_answers):
    llm = ParallelCompLLM(engine=engine)
    retriever = VectorStoreIndex(nodes, embed_model=letter_counts).as_retriever(similarity_top_k=4)
    retrieved = retriever.retrieve(QUESTION)
    cutoff = sorted(node.score for node in retrieved)[1]  # drops the least similar node
    query_engine = RetrieverQueryEngine(
        retriever,
        response_synthesizer=ParallelCompSynthesizer(llm=llm),
        node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=cutoff)],
    )

    response = query_engine.query(QUESTION)

    given = [node.node for node in retrieved if node.score >= cutoff]
    assert len(given) == 3
    expected = engine.generate([node.text for node in given], QUESTION)
    [answer] = llm_answers()
    assert answer.token_ids == expected.token_ids
    assert answer.stats.context_tokens == sum(engine.count_tokens(n.text) for n in given)
    assert _sources(response) == _kept(given, expected)
    # Scores are relevance, higher is better: a postprocessor over them keeps the best nodes.
    scores = [score for _, score in _sources(response)]
    assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
    cutoff = SimilarityPostprocessor(similarity_cutoff=scores[0])
    best = cutoff.postprocess_nodes(response.source_nodes)
    assert best == [source for source in response.source_nodes if source.score == scores[0]]


def test_nodes_are_shown_with_their_llm_metadata(engine):
    llm = ParallelCompLLM(engine=engine)
    nodes = [
        TextNode(text=text_of_tokens(300, seed=1), metadata={"title": "first", "size": 3}),
        TextNode(text=text_of_tokens(300, seed=2), metadata={"title": "second", "size": 4}),
    ]
    for node in nodes:
        node.excluded_llm_metadata_keys = ["size"]
    shown = [node.get_content(metadata_mode=MetadataMode.LLM) for node in nodes]
    assert shown[0].startswith("title: first\n\n") and "size" not in shown[0]

    response = ParallelCompSynthesizer(llm=llm).synthesize(QUESTION, _scored(nodes))

    expected = engine.generate(shown, QUESTION)
    assert response.response == expected.text
    assert response.metadata == {node.node_id: node.metadata for node in nodes}


def _scored(nodes) -> list[NodeWithScore]:
    return [NodeWithScore(node=node) for node in nodes]


def test_its_prompt_is_customisable(wide_engine, nodes):
    llm = ParallelCompLLM(engine=wide_engine, max_new_tokens=8)
    synthesizer = ParallelCompSynthesizer(llm=llm)
    assert synthesizer.get_prompts() == {"text_qa_template": DEFAULT_TEXT_QA_TEMPLATE}
    texts = [node.text for node in nodes]
    plain = wide_engine.generate(texts, QUESTION, max_new_tokens=8)
    assert synthesizer.synthesize(QUESTION, _scored(nodes)).response == plain.text

    synthesizer.update_prompts({"text_qa_template": DEFAULT_TEXT_QA_PROMPT})
    response = synthesizer.synthesize(QUESTION, _scored(nodes))
    # LlamaIndex's words before the context lead every chunk; the rest frames the question.
    expected = wide_engine.generate(
        texts,
        "---------------------\nGiven the context information and not prior knowledge, "
        f"answer the query.\nQuery: {QUESTION}\nAnswer:",
        system_prompt="Context information is below.\n---------------------",
        max_new_tokens=8,
    )
    assert response.response == expected.text
    assert _sources(response) == _kept(nodes, expected)

    synthesizer.update_prompts({"text_qa_template": PromptTemplate("{query_str}")})
    with pytest.raises(InvalidInputError, match="context_str"):
        synthesizer.synthesize(QUESTION, _scored(nodes))


def test_streaming_fills_in_the_sources_when_the_stream_ends(engine, nodes):
    llm = ParallelCompLLM(engine=engine)
    plain = ParallelCompSynthesizer(llm=llm).synthesize(QUESTION, _scored(nodes))
    streaming = ParallelCompSynthesizer(llm=llm, streaming=True).synthesize(
        QUESTION, _scored(nodes)
    )
    assert isinstance(streaming, StreamingResponse)
    assert streaming.source_nodes == []
    tokens = list(streaming.response_gen)
    assert len(tokens) > 1 and "".join(tokens) == plain.response
    assert _sources(streaming) == _sources(plain)
    assert streaming.metadata == plain.metadata


def test_async_synthesis_matches_the_sync_one(engine, nodes):
    llm = ParallelCompLLM(engine=engine)
    plain = ParallelCompSynthesizer(llm=llm).synthesize(QUESTION, _scored(nodes))

    async def run():
        answered = await ParallelCompSynthesizer(llm=llm).asynthesize(QUESTION, _scored(nodes))
        streaming = await ParallelCompSynthesizer(llm=llm, streaming=True).asynthesize(
            QUESTION, _scored(nodes)
        )
        assert isinstance(streaming, AsyncStreamingResponse)
        return answered, await streaming.get_response()

    for response in asyncio.run(run()):
        assert response.response == plain.response
        assert _sources(response) == _sources(plain)


def test_get_response_is_the_answer_text(engine, nodes):
    llm = ParallelCompLLM(engine=engine)
    texts = [node.text for node in nodes]
    expected = engine.generate(texts, QUESTION).text
    assert ParallelCompSynthesizer(llm=llm).get_response(QUESTION, texts) == expected
    streamed = ParallelCompSynthesizer(llm=llm, streaming=True).get_response(QUESTION, texts)
    assert "".join(streamed) == expected

    async def run():
        streaming = ParallelCompSynthesizer(llm=llm, streaming=True)
        tokens = await streaming.aget_response(QUESTION, texts)
        return (
            await ParallelCompSynthesizer(llm=llm).aget_response(QUESTION, texts),
            "".join([token async for token in tokens]),
        )

    assert asyncio.run(run()) == (expected, expected)


def test_additional_source_nodes_follow_the_kept_ones(engine, nodes):
    synthesizer = ParallelCompSynthesizer(llm=ParallelCompLLM(engine=engine))
    extra = NodeWithScore(node=TextNode(text="not read", id_="extra"), score=0.25)
    response = synthesizer.synthesize(QUESTION, _scored(nodes), additional_source_nodes=[extra])
    plain = synthesizer.synthesize(QUESTION, _scored(nodes))
    assert _sources(response) == _sources(plain) + [("extra", 0.25)]


def test_no_nodes_give_llama_indexs_empty_response(llm):
    assert ParallelCompSynthesizer(llm=llm).synthesize(QUESTION, []).response == "Empty Response"


@pytest.mark.parametrize("streaming", [False, True])
def test_a_context_over_the_limit_raises(llm, streaming):
    nodes = _scored([TextNode(text="x" * 3000), TextNode(text="y" * 2001)])
    synthesizer = ParallelCompSynthesizer(llm=llm, streaming=streaming)
    with pytest.raises(ContextTooLongError, match="5001 tokens"):
        synthesizer.synthesize(QUESTION, nodes)
    with pytest.raises(ContextTooLongError):
        asyncio.run(synthesizer.asynthesize(QUESTION, nodes))
