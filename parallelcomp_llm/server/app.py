"""`create_app`: the FastAPI app of one engine, with no global state (each app has its own
context registry and metrics registry).

Routes: `GET /health` (open to all), and behind the API key when one is set: `GET /v1/models`,
`GET /v1/models/{model}`, `POST /v1/chat/completions`, `POST /v1/completions`,
`POST /v1/contexts`, `DELETE /v1/contexts/{context_id}`, `GET /metrics`.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from starlette.requests import Request
from starlette.responses import Response

from .. import __version__
from ..engine import ParallelCompEngine
from .answering import Answering
from .auth import require_key
from .contexts import ContextRegistry
from .errors import APIError, install_error_handlers
from .limits import DeclaredBodyLimit
from .metrics import RequestCounter, ServerMetrics
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ContextDeleted,
    ContextInfo,
    ContextUpload,
    ModelCard,
    ModelList,
)
from .settings import ServerSettings


def create_app(engine: ParallelCompEngine, settings: ServerSettings) -> FastAPI:
    """An OpenAI-compatible app answering with `engine` under `settings.model_name`, bodies
    bounded by `settings.max_body_bytes` (413 before any model work), uploaded corpora by
    `settings.max_contexts`."""
    contexts = ContextRegistry(settings.max_contexts)
    metrics = ServerMetrics(lambda: engine.queue_depth, lambda: len(contexts))
    answering = Answering(engine, settings.model_name, contexts, metrics)
    app = FastAPI(
        title="parallelcomp-llm",
        version=__version__,
        summary="OpenAI-compatible long-context answers with ParallelComp.",
    )
    install_error_handlers(app)
    app.add_middleware(DeclaredBodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestCounter, metrics=metrics)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queue_depth": engine.queue_depth, "busy": engine.busy}

    keyed = [] if settings.api_key is None else [Depends(require_key(settings.api_key))]
    routes = _api_routes(answering, metrics, settings.max_body_bytes)
    app.include_router(routes, dependencies=keyed)
    return app


def _api_routes(answering: Answering, metrics: ServerMetrics, max_body_bytes: int) -> APIRouter:
    router = APIRouter(max_body_size=max_body_bytes)
    card = ModelCard(
        id=answering.model_name,
        created=int(time.time()),
        max_model_len=answering.engine.context_window,
    )

    @router.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[card])

    @router.get("/v1/models/{model:path}")
    async def model(model: str) -> ModelCard:
        answering.check_model(model)
        return card

    @router.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, http: Request) -> Response:
        return await answering.chat(request, http.is_disconnected)

    @router.post("/v1/completions")
    async def completions(request: CompletionRequest, http: Request) -> Response:
        return await answering.complete(request, http.is_disconnected)

    @router.post("/v1/contexts")
    async def upload_context(upload: ContextUpload) -> ContextInfo:
        return await answering.upload(upload)

    @router.delete("/v1/contexts/{context_id}")
    async def delete_context(context_id: str) -> ContextDeleted:
        if not answering.contexts.remove(context_id):
            raise APIError(
                404, f"no uploaded context has the id {context_id!r}", code="context_not_found"
            )
        return ContextDeleted(id=context_id)

    @router.get("/metrics")
    async def prometheus() -> Response:
        return metrics.exposition()

    return router
