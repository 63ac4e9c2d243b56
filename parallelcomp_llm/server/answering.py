"""`Answering`: the API's requests run on one engine, off the event loop, answered whole or as a
server-sent event stream; a client that leaves, whether it reads a stream or waits for the whole
answer, cancels its request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ..answer import Answer
from ..engine import ParallelCompEngine
from ..intake import Context
from ..streams import AnswerStream
from .contexts import ContextRegistry
from .errors import APIError, api_error
from .metrics import ServerMetrics
from .replies import ChatReply, CompletionReply, Reply
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ContextInfo,
    ContextUpload,
    Sampling,
    documents_text,
)

Disconnected = Callable[[], Awaitable[bool]]
"""Whether the client of a request has gone (starlette's `Request.is_disconnected`)."""

DISCONNECT_POLL_S = 0.1
"""How often a request answered whole checks that its client is still there."""
CLIENT_CLOSED_REQUEST = 499
"""The status logged for a request whose client left before its answer (nginx's)."""


class Answering:
    """Runs requests on `engine`, served as `model_name`, over the uploaded `contexts`."""

    def __init__(
        self,
        engine: ParallelCompEngine,
        model_name: str,
        contexts: ContextRegistry,
        metrics: ServerMetrics,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.contexts = contexts
        self.metrics = metrics

    def check_model(self, name: str) -> None:
        """404 unless `name` is the model served (OpenAI's `model_not_found`)."""
        if name != self.model_name:
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves `{self.model_name}`.",
                code="model_not_found",
                param="model",
            )

    async def chat(self, request: ChatCompletionRequest, disconnected: Disconnected) -> Response:
        started = time.perf_counter()
        self.check_model(request.model)
        stream = await run_in_threadpool(
            self.engine.stream_chat,
            [message.for_engine() for message in request.messages],
            context=self._context(request),
            tools=request.tools,
            tool_choice=request.tool_choice,
            **request.decode_options(),
        )
        reply = ChatReply(self.model_name)
        return await self._respond(stream, reply, request, started, disconnected)

    async def complete(self, request: CompletionRequest, disconnected: Disconnected) -> Response:
        started = time.perf_counter()
        self.check_model(request.model)
        stream = await run_in_threadpool(
            self.engine.stream_complete, request.prompt, **request.decode_options()
        )
        reply = CompletionReply(self.model_name)
        return await self._respond(stream, reply, request, started, disconnected)

    async def upload(self, upload: ContextUpload) -> ContextInfo:
        """Encode a corpus once and keep it for the chats that name its id."""
        cache = await run_in_threadpool(
            self.engine.encode, documents_text(upload.documents), system_prompt=upload.system_prompt
        )
        return ContextInfo(
            id=self.contexts.add(cache),
            created=int(time.time()),
            context_tokens=cache.context_tokens,
            chunks=len(cache.chunks),
        )

    def _context(self, request: ChatCompletionRequest) -> Context | None:
        if request.documents is not None:
            return documents_text(request.documents)
        if request.context_id is None:
            return None
        cache = self.contexts.get(request.context_id)
        if cache is None:
            raise APIError(
                404,
                f"no uploaded context has the id {request.context_id!r} (it may have been "
                "deleted, or dropped as the least recently used): upload it again",
                code="context_not_found",
                param="context_id",
            )
        return cache

    async def _respond(
        self,
        stream: AnswerStream,
        reply: Reply,
        request: Sampling,
        started: float,
        disconnected: Disconnected,
    ) -> Response:
        if request.stream:
            events = self._events(stream, reply, request.include_usage, started)
            return EventSourceResponse(events, sep="\n")
        reading = asyncio.ensure_future(self._whole(stream, started))
        try:
            while not (await asyncio.wait({reading}, timeout=DISCONNECT_POLL_S))[0]:
                if await disconnected():
                    return Response(status_code=CLIENT_CLOSED_REQUEST)
            return JSONResponse(reply.whole(reading.result()).model_dump(mode="json"))
        finally:
            if not reading.done():
                reading.cancel()
                stream.cancel()

    async def _whole(self, stream: AnswerStream, started: float) -> Answer:
        """The answer of a stream read to its end, the time to its first token observed."""
        async for _ in self._deltas(stream, started):
            pass
        return await self._finished(stream)

    async def _events(
        self, stream: AnswerStream, reply: Reply, include_usage: bool, started: float
    ) -> AsyncIterator[str]:
        """The stream's SSE data: chunks, the usage chunk if asked, `[DONE]`; an error after
        the stream began is an event in OpenAI's error shape. Leaving it cancels the request."""
        try:
            for chunk in reply.opening():
                yield chunk.model_dump_json()
            async for delta in self._deltas(stream, started):
                yield reply.delta(delta).model_dump_json()
            answer = await self._finished(stream)
            for chunk in reply.closing(answer):
                yield chunk.model_dump_json()
            if include_usage:
                yield reply.usage(answer).model_dump_json()
            yield "[DONE]"
        except Exception as error:  # noqa: BLE001 - the response has begun: an error event
            yield json.dumps(api_error(error).body())
        finally:
            stream.cancel()

    async def _deltas(self, stream: AnswerStream, started: float) -> AsyncIterator[str]:
        """The stream's text deltas, the time to the first one observed."""
        first = True
        async for delta in stream:
            if first:
                self.metrics.time_to_first_token.observe(time.perf_counter() - started)
                first = False
            yield delta

    async def _finished(self, stream: AnswerStream) -> Answer:
        """The answer of a stream read to its end, counted."""
        answer = await stream.wait_async()
        self.metrics.answered(answer)
        return answer
