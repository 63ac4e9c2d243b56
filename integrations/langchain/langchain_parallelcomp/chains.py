"""`create_long_context_chain`: answer a question over every document at once, no retrieval."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnableLambda

from parallelcomp_llm import InvalidInputError

from .chat_models import ChatParallelComp
from .llms import ParallelCompLLM


def create_long_context_chain(
    llm: ParallelCompLLM | ChatParallelComp,
) -> Runnable[dict[str, Any], str]:
    """A Runnable from `{"documents": [...], "question": "..."}` to the answer text.

    The documents (texts or `Document`s) go to the engine as separate pieces of context, so their
    boundaries are chunk boundaries; the question is the prompt. It is the drop-in replacement of a
    retrieval chain: the model reads every document instead of a top-k. Invoke, batch, stream and
    their async forms all work, with the model's streaming.
    """
    if not isinstance(llm, (ParallelCompLLM, ChatParallelComp)):
        raise TypeError(
            "create_long_context_chain needs a ParallelCompLLM or ChatParallelComp, "
            f"got {type(llm).__name__}"
        )

    def over_documents(inputs: Mapping[str, Any]) -> Runnable:
        if not isinstance(inputs, Mapping) or not {"documents", "question"} <= set(inputs):
            raise InvalidInputError(
                'the chain takes a dict {"documents": [...], "question": "..."}'
            )
        question = inputs["question"]
        return RunnableLambda(lambda _: question, name="question") | llm.bind(
            context=inputs["documents"]
        )

    return (RunnableLambda(over_documents, name="long_context") | StrOutputParser()).with_config(
        run_name="long_context_chain"
    )
