"""LangChain's standard chat model tests (`langchain-tests`) for `ChatParallelComp`.

Unit tests run on the tiny random engine. Integration tests run on the real default model. Both
declare tool calling with `tool_choice`, structured output and JSON mode
(`ToolsAndStructuredOutput`); the tests that do not apply to a local text-only model (images,
audio, PDF, VCR recordings, per-call model override) skip themselves through the capability
properties, each with the suite's own reason. The integration tests that SmolLM2-135M-Instruct is
too weak to pass (free-text JSON values, JSON mode, unforced tool calls) are overridden as
expected failures, each with the reason seen in its output.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_parallelcomp import ChatParallelComp
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from parallelcomp_llm import ParallelCompEngine
from parallelcomp_llm.testing import tiny_engine

LOOPS_IN_STRINGS = (
    "SmolLM2-135M-Instruct, decoding greedily, repeats itself inside the joke's unbounded strings "
    "('A cat is a cat, right? A cat is a cat, right? ...', checked up to 128 tokens) and never "
    "closes the value, so the answer reaches max_tokens and is refused as incomplete"
)
NESTS_IN_JSON_MODE = (
    'under JSON mode (any JSON object) SmolLM2-135M-Instruct nests \'{"setup": {"setup": '
    "...' without end instead of writing the two keys the prompt asks for"
)
NO_UNFORCED_CALLS = (
    "SmolLM2-135M-Instruct is not trained for tool calling: offered a tool as text with the "
    "choice left to it, it answers in prose ('The value of magic_function(3) is 3.') instead of "
    "a <tool_call> block; forced calls (tool_choice) pass"
)
MAX_TOKENS = 64
"""Room for the forced calls with free-text arguments (a call of `unicode_customer` takes about 55
tokens); decoding ends as soon as a call is complete."""
loops_in_strings = pytest.mark.xfail(reason=LOOPS_IN_STRINGS)
schema_types = pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])


@cache
def _tiny_engine() -> ParallelCompEngine:
    return tiny_engine("llama")


@cache
def _default_engine() -> ParallelCompEngine:
    return ParallelCompEngine.default()


class ToolsAndStructuredOutput:
    """The capabilities both classes declare: `bind_tools` with a `tool_choice` that forces a call
    ("any" or a tool's name), `with_structured_output` (its default method, a JSON schema
    enforced by the grammar) and JSON mode."""

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return {"method": "json_schema"}

    @property
    def supports_json_mode(self) -> bool:
        return True


class TestChatParallCompUnit(ToolsAndStructuredOutput, ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatParallelComp]:
        return ChatParallelComp

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": _tiny_engine()}


@pytest.mark.default_model
class TestChatParallCompIntegration(ToolsAndStructuredOutput, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatParallelComp]:
        return ChatParallelComp

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": _default_engine(), "max_tokens": MAX_TOKENS}

    @property
    def supports_model_override(self) -> bool:
        """One instance wraps one loaded engine; another model means another instance."""
        return False

    @loops_in_strings
    @schema_types
    def test_structured_output(
        self,
        model: BaseChatModel,
        schema_type: Literal["pydantic", "typeddict", "json_schema"],
    ) -> None:
        super().test_structured_output(model, schema_type)

    @loops_in_strings
    @schema_types
    async def test_structured_output_async(
        self,
        model: BaseChatModel,
        schema_type: Literal["pydantic", "typeddict", "json_schema"],
    ) -> None:
        await super().test_structured_output_async(model, schema_type)

    @loops_in_strings
    def test_structured_output_pydantic_2_v1(self, model: BaseChatModel) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @loops_in_strings
    def test_structured_output_optional_param(self, model: BaseChatModel) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason=NESTS_IN_JSON_MODE)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(reason=NO_UNFORCED_CALLS)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
