"""With the real default model (SmolLM2-135M-Instruct, trained window 8192 tokens): a passkey found
through `create_long_context_chain` in documents longer than the trained window."""

from __future__ import annotations

import pytest
from langchain_parallelcomp import ChatParallelComp, create_long_context_chain

from parallelcomp_llm.testing import (
    PASSKEY_NOISE,
    PASSKEY_QUESTION,
    first_integer,
    passkey_haystack,
)

pytestmark = pytest.mark.default_model
KEY = 68217


def test_passkey_over_documents_beyond_the_trained_window():
    llm = ChatParallelComp(max_tokens=16)
    count = llm.engine.count_tokens
    noise = PASSKEY_NOISE * (3900 // count(PASSKEY_NOISE))
    documents = [noise, passkey_haystack(3900, 0.4, KEY, count), noise]
    assert sum(llm.get_num_tokens(d) for d in documents) > llm.engine.native_window == 8192
    answer = create_long_context_chain(llm).invoke(
        {"documents": documents, "question": PASSKEY_QUESTION}
    )
    assert first_integer(answer) == KEY
