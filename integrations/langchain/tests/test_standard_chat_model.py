"""LangChain's standard chat model tests (`langchain-tests`) for `ChatParallelComp`.

Unit tests run on the tiny random engine. Integration tests run on the real default model; the
ones that do not apply to a local text-only model without tools (tool calling, structured output,
JSON mode, images, audio, PDF, VCR recordings, per-call model override) skip themselves through the
capability properties below, each with the suite's own reason.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from langchain_parallelcomp import ChatParallelComp
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from parallelcomp_llm import ParallelCompEngine
from parallelcomp_llm.testing import tiny_engine


@cache
def _tiny_engine() -> ParallelCompEngine:
    return tiny_engine("llama")


@cache
def _default_engine() -> ParallelCompEngine:
    return ParallelCompEngine.default()


class TestChatParallCompUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatParallelComp]:
        return ChatParallelComp

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": _tiny_engine()}


@pytest.mark.default_model
class TestChatParallCompIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatParallelComp]:
        return ChatParallelComp

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": _default_engine(), "max_tokens": 24}

    @property
    def supports_model_override(self) -> bool:
        """One instance wraps one loaded engine; another model means another instance."""
        return False
