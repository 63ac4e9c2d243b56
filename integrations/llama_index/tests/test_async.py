"""Async variants give the sync results and run the model in worker threads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from parallelcomp_llm import ContextTooLongError, InvalidInputError
from parallelcomp_llm.testing import text_of_tokens

PROMPT = "Once upon a time"
DOCUMENTS = [text_of_tokens(300, seed=1), text_of_tokens(300, seed=2), text_of_tokens(300, seed=3)]
MESSAGES = [ChatMessage(role=MessageRole.USER, content="Hello")]


async def _collect(responses: Awaitable) -> list:
    return [response async for response in await responses]


def test_async_variants_match_the_sync_ones(llm):
    async def run():
        return (
            await llm.acomplete(PROMPT),
            await llm.acomplete("Which?", context=DOCUMENTS, max_tokens=8),
            await llm.achat(MESSAGES),
            await _collect(llm.astream_complete(PROMPT)),
            await _collect(llm.astream_chat(MESSAGES, stop="a")),
        )

    complete, with_context, chat, streamed, streamed_chat = asyncio.run(run())
    assert complete.text == llm.complete(PROMPT).text
    assert (
        with_context.raw["answer"].token_ids
        == llm.complete("Which?", context=DOCUMENTS, max_tokens=8).raw["answer"].token_ids
    )
    assert chat.message.content == llm.chat(MESSAGES).message.content
    assert "".join(r.delta for r in streamed) == complete.text
    assert streamed[-1].raw["answer"].token_ids == complete.raw["answer"].token_ids
    sync_chat = list(llm.stream_chat(MESSAGES, stop="a"))
    assert [r.delta for r in streamed_chat] == [r.delta for r in sync_chat]
    assert streamed_chat[-1].message.content == sync_chat[-1].message.content


async def _ticks_while(work: Awaitable) -> tuple[object, int]:
    """Run `work` as a task; count the event-loop turns another coroutine got meanwhile."""
    task = asyncio.ensure_future(work)
    ticks = 0
    while not task.done():
        await asyncio.sleep(0)
        ticks += 1
    return await task, ticks


@pytest.mark.parametrize(
    "call",
    [
        lambda llm: llm.acomplete("Which?", context=DOCUMENTS),
        lambda llm: llm.achat(MESSAGES),
        lambda llm: _collect(llm.astream_complete("Which?", context=DOCUMENTS)),
        lambda llm: _collect(llm.astream_chat(MESSAGES)),
    ],
)
def test_async_calls_leave_the_event_loop_free(llm, call):
    result, ticks = asyncio.run(_ticks_while(call(llm)))
    assert result
    # A call that ran the model on the loop would finish within one turn of the loop.
    assert ticks > 10


def test_async_errors_are_the_engines(llm):
    with pytest.raises(ContextTooLongError):
        asyncio.run(llm.acomplete("Which?", context="x" * 5001))
    with pytest.raises(InvalidInputError):
        asyncio.run(llm.astream_chat([]))
