"""`create_long_context_chain`: answer a question over every document at once, no retrieval, with
the documents the engine kept, as `create_retrieval_chain` answers with the ones it retrieved."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.documents import Document
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage, HumanMessage, convert_to_messages
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.utils import AddableDict

from parallelcomp_llm import InvalidInputError

from .chat_models import ChatParallelComp
from .llms import ParallelCompLLM

_INPUTS = (
    'the chain takes a dict {"documents": [...], "input": "..."} ("question" in place of "input", '
    'not both), with an optional "chat_history" of messages'
)


class _AnswerMetadata(BaseCallbackHandler):
    """Keeps the response metadata (chat model) or generation info (LLM) of the model's run."""

    run_inline = True

    def __init__(self) -> None:
        self.metadata: Mapping[str, Any] = {}

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        generation = response.generations[0][0]
        if isinstance(generation, ChatGeneration):
            self.metadata = generation.message.response_metadata
        else:
            self.metadata = generation.generation_info or {}


def _request(inputs: Any) -> tuple[Any, LanguageModelInput]:
    """The chain's documents and the model's input: the question, after the chat history."""
    if not isinstance(inputs, Mapping) or "documents" not in inputs:
        raise InvalidInputError(_INPUTS)
    if ("input" in inputs) == ("question" in inputs):
        raise InvalidInputError(_INPUTS)
    question = inputs["input"] if "input" in inputs else inputs["question"]
    history = inputs.get("chat_history") or []
    if not history:
        return inputs["documents"], question
    return inputs["documents"], [*convert_to_messages(history), HumanMessage(question)]


def _with_handler(config: RunnableConfig, handler: BaseCallbackHandler) -> RunnableConfig:
    """`config` with `handler` added to its callbacks."""
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        callbacks = callbacks.copy()
        callbacks.add_handler(handler)
    else:
        callbacks = [*(callbacks or []), handler]
    return {**config, "callbacks": callbacks}


def _text(chunk: str | BaseMessage) -> str:
    """The text of a streamed chunk: an LLM's string, or a chat model's message chunk."""
    return chunk if isinstance(chunk, str) else chunk.text


def _kept(documents: Any, metadata: Mapping[str, Any]) -> list[Document]:
    """The documents the engine kept, most relevant first, with `metadata["relevance"]`; indices
    past the caller's documents belong to the chat history and are left out."""
    items = [documents] if isinstance(documents, (str, Document)) else list(documents)
    relevance = dict(
        zip(metadata["kept_documents"], metadata["kept_document_relevance"], strict=True)
    )
    kept = sorted((i for i in relevance if i < len(items)), key=lambda i: (-relevance[i], i))
    kept_documents = []
    for index in kept:
        item = items[index]
        document = item if isinstance(item, Document) else Document(page_content=item)
        kept_documents.append(
            document.model_copy(
                update={"metadata": {**document.metadata, "relevance": relevance[index]}}
            )
        )
    return kept_documents


def create_long_context_chain(
    llm: ParallelCompLLM | ChatParallelComp,
) -> Runnable[dict[str, Any], dict[str, Any]]:
    """A Runnable from `{"documents": [...], "input": "..."}` to `{"answer": str, "context":
    [Document, ...]}`, the keys of `create_retrieval_chain`.

    Inputs: `documents`, texts or `Document`s, every one of them read by the model (each its own
    piece of context, so its boundaries are chunk boundaries; a `Document`'s title and source are
    shown in front of its text); the question as `input` (or `question`); optionally
    `chat_history`, the messages before the question (for a chat model, whose engine reads the
    earlier turns as context after the documents).

    Output: `answer`, the model's text, and `context`, the documents the engine kept for the answer
    (`answer.stats.kept_documents`), most relevant first, as `Document`s (a text becomes
    `Document(page_content=text)`) with `metadata["relevance"]`: the relevance of the document's
    best kept chunk (0 to 1, higher is more relevant). It replaces a retrieval chain: the model
    reads every document instead of a top-k. Invoke, batch, stream and their async forms all work;
    a stream yields `{"answer": delta}` chunks, then `{"context": [...]}`.
    """
    if not isinstance(llm, (ParallelCompLLM, ChatParallelComp)):
        raise TypeError(
            "create_long_context_chain needs a ParallelCompLLM or ChatParallelComp, "
            f"got {type(llm).__name__}"
        )

    def answer(inputs: Mapping[str, Any], config: RunnableConfig) -> Iterator[AddableDict]:
        documents, model_input = _request(inputs)
        handler = _AnswerMetadata()
        model = llm.bind(context=documents)
        for chunk in model.stream(model_input, _with_handler(config, handler)):
            yield AddableDict(answer=_text(chunk))
        yield AddableDict(context=_kept(documents, handler.metadata))

    async def aanswer(
        inputs: Mapping[str, Any], config: RunnableConfig
    ) -> AsyncIterator[AddableDict]:
        documents, model_input = _request(inputs)
        handler = _AnswerMetadata()
        model = llm.bind(context=documents)
        async for chunk in model.astream(model_input, _with_handler(config, handler)):
            yield AddableDict(answer=_text(chunk))
        yield AddableDict(context=_kept(documents, handler.metadata))

    return RunnableLambda(answer, afunc=aanswer, name="long_context_chain")
