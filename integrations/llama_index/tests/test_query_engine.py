"""`LongContextQueryEngine` answers over every node in one engine call and cites the kept nodes."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import SimpleKeywordTableIndex, SummaryIndex, VectorStoreIndex
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.prompts import PromptTemplate
from llama_index.core.schema import Document, MetadataMode, TextNode
from llama_index.llms.parallelcomp import LongContextQueryEngine, ParallelCompLLM

from parallelcomp_llm import ContextTooLongError, InvalidInputError
from parallelcomp_llm.testing import count_prefills, text_of_tokens, tiny_engine

QUESTION = "Which part matters?"


def _expected_sources(nodes, answer) -> list[tuple[str, float]]:
    """(node id, score) of the nodes in kept chunks, most relevant first."""
    kept = [
        (-chunk.relevance, d)
        for chunk in answer.stats.chunks
        if chunk.kept
        for d in chunk.documents
    ]
    return [(nodes[d].node_id, -negated) for negated, d in sorted(kept)]


def test_query_sends_every_node_in_one_call_and_returns_the_kept_ones(engine, nodes):
    debug = LlamaDebugHandler()
    llm = ParallelCompLLM(engine=engine, callback_manager=CallbackManager([debug]))
    texts = [node.text for node in nodes]
    assert sum(engine.count_tokens(text) for text in texts) > 2 * engine.native_window

    response = LongContextQueryEngine(llm=llm, nodes=nodes).query(QUESTION)

    expected = engine.generate(texts, QUESTION)
    assert isinstance(response, Response)
    assert response.response == expected.text
    calls = debug.get_event_pairs(CBEventType.LLM)
    assert len(calls) == 1
    assert calls[0][0].payload[EventPayload.ADDITIONAL_KWARGS]["context"] == texts
    assert expected.stats.chunks_total == 4 and expected.stats.chunks_kept == 2
    sources = [(source.node.node_id, source.score) for source in response.source_nodes]
    assert sources == _expected_sources(nodes, expected)
    assert {node_id for node_id, _ in sources} == {
        nodes[d].node_id for d in expected.stats.kept_documents
    }
    assert response.metadata == {node_id: {} for node_id, _ in sources}


def test_nodes_packed_into_one_chunk_share_its_score(engine, nodes):
    llm = ParallelCompLLM(engine=engine)
    small = nodes[:2]
    response = LongContextQueryEngine(llm=llm, nodes=small).query(QUESTION)
    answer = engine.generate([node.text for node in small], QUESTION)
    assert answer.stats.chunks_total == 1 and answer.stats.scorer is None
    assert [(s.node.node_id, s.score) for s in response.source_nodes] == [
        ("node-0", 1.0),
        ("node-1", 1.0),
    ]


def test_from_index_uses_all_of_a_summary_indexs_nodes(llm, engine, nodes):
    index = SummaryIndex(nodes)
    query_engine = LongContextQueryEngine.from_index(index, llm=llm)
    assert [node.node_id for node in query_engine.nodes] == [node.node_id for node in nodes]
    response = query_engine.query(QUESTION)
    assert response.response == engine.generate([node.text for node in nodes], QUESTION).text


def test_from_index_uses_all_of_a_vector_store_indexs_nodes(llm, engine, nodes, letter_counts):
    index = VectorStoreIndex(nodes, embed_model=letter_counts)
    assert len(index.as_retriever(similarity_top_k=2).retrieve(QUESTION)) == 2
    query_engine = LongContextQueryEngine.from_index(index, llm=llm)
    assert [node.node_id for node in query_engine.nodes] == [node.node_id for node in nodes]
    response = query_engine.query(QUESTION)
    assert response.response == engine.generate([node.text for node in nodes], QUESTION).text


def test_from_index_refuses_an_index_it_cannot_list(llm, nodes):
    with pytest.raises(InvalidInputError, match="SimpleKeywordTableIndex"):
        LongContextQueryEngine.from_index(SimpleKeywordTableIndex(nodes, llm=llm), llm=llm)
    with pytest.raises(InvalidInputError, match="no nodes"):
        LongContextQueryEngine.from_index(SummaryIndex([]), llm=llm)


def test_from_documents_splits_and_shows_metadata_to_the_model(llm, engine):
    documents = [
        Document(text=text_of_tokens(700, seed=1), metadata={"title": "first"}, id_="doc-1"),
        Document(text=text_of_tokens(300, seed=2), metadata={"title": "second"}, id_="doc-2"),
    ]
    splitter = SentenceSplitter(chunk_size=256, chunk_overlap=0, tokenizer=llm.tokenizer.encode)
    query_engine = LongContextQueryEngine.from_documents(
        documents, llm=llm, transformations=[splitter]
    )
    assert len(query_engine.nodes) > len(documents)
    assert {node.ref_doc_id for node in query_engine.nodes} == {"doc-1", "doc-2"}
    texts = [node.get_content(metadata_mode=MetadataMode.LLM) for node in query_engine.nodes]
    assert texts[0].startswith("title: first")

    response = query_engine.query(QUESTION)
    expected = engine.generate(texts, QUESTION)
    assert response.response == expected.text
    assert [s.node.node_id for s in response.source_nodes] == [
        node_id for node_id, _ in _expected_sources(query_engine.nodes, expected)
    ]
    assert all(response.metadata[s.node.node_id]["title"] for s in response.source_nodes)


def test_streaming_fills_in_the_sources_when_the_stream_ends(llm, nodes):
    plain = LongContextQueryEngine(llm=llm, nodes=nodes).query(QUESTION)
    streaming = LongContextQueryEngine(llm=llm, nodes=nodes, streaming=True).query(QUESTION)
    assert isinstance(streaming, StreamingResponse)
    assert streaming.source_nodes == []
    tokens = list(streaming.response_gen)
    assert len(tokens) > 1 and "".join(tokens) == plain.response
    assert [(s.node.node_id, s.score) for s in streaming.source_nodes] == [
        (s.node.node_id, s.score) for s in plain.source_nodes
    ]
    assert streaming.metadata == plain.metadata


def test_async_queries_match_the_sync_one(llm, nodes):
    plain = LongContextQueryEngine(llm=llm, nodes=nodes).query(QUESTION)

    async def run():
        answered = await LongContextQueryEngine(llm=llm, nodes=nodes).aquery(QUESTION)
        streaming = await LongContextQueryEngine(llm=llm, nodes=nodes, streaming=True).aquery(
            QUESTION
        )
        assert isinstance(streaming, AsyncStreamingResponse)
        return answered, await streaming.get_response()

    for response in asyncio.run(run()):
        assert response.response == plain.response
        assert [(s.node.node_id, s.score) for s in response.source_nodes] == [
            (s.node.node_id, s.score) for s in plain.source_nodes
        ]


@pytest.mark.parametrize(
    "texts, question, error",
    [
        (["some text"], "", InvalidInputError),
        (["", "   "], QUESTION, InvalidInputError),
        (["x" * 3000, "y" * 2001], QUESTION, ContextTooLongError),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
def test_bad_queries_raise_the_engines_errors(llm, texts, question, error, streaming):
    nodes = [TextNode(text=text) for text in texts]
    query_engine = LongContextQueryEngine(llm=llm, nodes=nodes, streaming=streaming)
    with pytest.raises(error):
        query_engine.query(question)
    with pytest.raises(error):
        asyncio.run(query_engine.aquery(question))


def test_a_query_engine_without_nodes_is_refused(llm):
    with pytest.raises(InvalidInputError, match="at least one node"):
        LongContextQueryEngine(llm=llm, nodes=[])


def test_its_prompt_is_the_synthesizers(llm, engine, nodes):
    query_engine = LongContextQueryEngine(llm=llm, nodes=nodes)
    assert list(query_engine.get_prompts()) == ["response_synthesizer:text_qa_template"]
    query_engine.update_prompts(
        {"response_synthesizer:text_qa_template": PromptTemplate("{context_str}\nQ: {query_str}")}
    )
    expected = engine.generate([node.text for node in nodes], "Q: " + QUESTION)
    assert query_engine.query(QUESTION).response == expected.text


def test_the_same_index_is_encoded_once_across_queries(nodes):
    engine = tiny_engine("llama", keep_chunks=2)
    prefills = count_prefills(engine.model)
    query_engine = LongContextQueryEngine(llm=ParallelCompLLM(engine=engine), nodes=nodes)
    first = query_engine.query("Which node?")
    encoded = len(prefills)
    second = query_engine.query("Anything else?")
    assert encoded >= 1 and len(prefills) == encoded
    assert first.source_nodes and second.source_nodes
