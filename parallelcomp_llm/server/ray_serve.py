"""The OpenAI-compatible app on Ray Serve: one engine replica per GPU, autoscaled, and requests
over the same corpus routed to the replica that holds its encoding (corpus affinity).

Two deployments. `ParallelCompReplica` loads an engine and serves `create_app(engine, settings)`
(`@serve.ingress`); each replica takes one GPU (`gpus_per_replica`) and Serve scales their number
between `min_replicas` and `max_replicas` on ongoing requests (`ServeOptions`). With
`corpus_affinity` (the default), `CorpusRouter` is the HTTP entry: it reads a request's corpus
key (`corpus_key`: the hash of its `documents`, or its uploaded `context_id`) and forwards the
request to the replicas' handle with that key as Ray Serve's multiplexed model id. Serve's router
sends a request with an id to a replica that has "loaded" it (`ParallelCompReplica.hold`, a
`@serve.multiplexed` loader that only records the key) and a new id to the replica that holds the
fewest, so a corpus asked about again reaches the replica whose engine kept its encoded chunks,
and an uploaded context (`POST /v1/contexts`, whose id the replica records too) the replica that
holds it. The affinity is best effort, as Serve's multiplexing is: when that replica is saturated
(`max_ongoing_requests`) or gone (scaled down), the request goes to another one, which encodes
the documents again, or answers 404 for an uploaded `context_id` it does not hold.

Built by `build_app`, or from the command line: `serve run
parallelcomp_llm.server.ray_serve:app_builder model=PATH max_replicas=4` (`ServeArgs`). Needs
the `server` and `ray` extras.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

try:
    import ray  # noqa: F401 - the clear error below, before `from ray import serve`
except ImportError as error:
    raise ImportError(
        "the Ray Serve deployment needs Ray: pip install 'parallelcomp-llm[server,ray]'"
    ) from error
from fastapi import FastAPI
from pydantic import ConfigDict, Field, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import StreamingResponse

from ..config import ParallelCompConfig
from ..context_cache import digest
from ..distributed.cluster import replica_gpus
from ..engine import ParallelCompEngine
from ..errors import CheckedModel
from .app import create_app
from .schemas import Document
from .settings import ServerSettings

REPLICA_HEADER = "x-parallelcomp-replica"
"""Response header naming the replica that answered (through `CorpusRouter`)."""
CORPORA_PER_REPLICA = 64
"""Corpus keys a replica reports holding, the least recently used dropped first: routing hints
only (what the engine keeps is bounded by its own context cache and `max_contexts`)."""
_UPLOAD_PATH = "/v1/contexts"


class ServeOptions(CheckedModel):
    """How the app is deployed on Ray Serve; every field is a default meant to be overridden."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(
        1, ge=1, le=1024, description="Replicas kept up (a model load is slow: at least one)."
    )
    max_replicas: int = Field(4, ge=1, le=1024, description="Most replicas the autoscaler starts.")
    target_ongoing_requests: float = Field(
        2.0,
        gt=0,
        le=1024,
        description="Ongoing requests per replica the autoscaler aims at: above it adds replicas, "
        "below it removes them.",
    )
    max_ongoing_requests: int = Field(
        8,
        ge=1,
        le=4096,
        description="Requests one replica takes at once (it queues them on its engine); more wait "
        "in Serve's router, or go to another replica.",
    )
    gpus_per_replica: int | None = Field(
        None,
        ge=0,
        le=1,
        description="1: one GPU per replica; 0: CPUs only; None: 1 when the Ray cluster has GPUs.",
    )
    cpus_per_replica: float = Field(
        1.0, gt=0, le=1024, description="CPUs Ray reserves per replica."
    )
    corpus_affinity: bool = Field(
        True,
        description="Route requests over the same corpus to the same replica (`CorpusRouter`); "
        "False serves the replicas directly, with Serve's default routing.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ServeOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def autoscaling_config(self) -> dict[str, Any]:
        """Ray Serve's `autoscaling_config` of the replicas."""
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }

    def ray_actor_options(self) -> dict[str, Any]:
        """Ray's resources of one replica: its GPU (found in the cluster when not given)."""
        gpus = replica_gpus(self.gpus_per_replica)
        return {"num_gpus": gpus, "num_cpus": self.cpus_per_replica}


def corpus_key(method: str, path: str, body: bytes) -> str | None:
    """The corpus a request is over, as a routing key: its uploaded `context_id`, else the hash
    of its `documents` as the engine reads them (a `POST /v1/contexts` upload has one too); None
    for a request without a corpus, or one the app will refuse."""
    if method != "POST":
        return None
    try:
        data = json.loads(body)
        if isinstance(data.get("context_id"), str) and path != _UPLOAD_PATH:
            return data["context_id"]
        documents = [Document.model_validate(item).as_text() for item in data["documents"]]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return "corpus-" + digest(documents)


@dataclass(frozen=True)
class ForwardedRequest:
    """An HTTP request as `CorpusRouter` hands it to a replica."""

    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@serve.deployment
@serve.ingress()
class ParallelCompReplica:
    """One engine and its app; served over HTTP directly, or through `CorpusRouter` (`answer`)."""

    def __init__(self, settings: ServerSettings, config: ParallelCompConfig) -> None:
        if settings.model:
            engine = ParallelCompEngine.from_pretrained(settings.model, config)
        else:
            engine = ParallelCompEngine.default(config)
        self.http_app = create_app(engine, settings)
        self.replica_name = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.http_app

    @serve.multiplexed(max_num_models_per_replica=CORPORA_PER_REPLICA)
    async def hold(self, corpus: str) -> str:
        """Record that this replica holds `corpus` (Serve then routes that key here)."""
        return corpus

    async def answer(self, request: ForwardedRequest) -> AsyncIterator[dict[str, Any]]:
        """Run `request` through the app: its ASGI response messages, as they come (the start
        naming this replica in `REPLICA_HEADER`). An upload's id is then held here too."""
        corpus = serve.get_multiplexed_model_id()
        if corpus:
            await self.hold(corpus)
        messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        done = asyncio.Event()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": request.path.encode(),
            "query_string": request.query_string,
            "root_path": "",
            "headers": request.headers,
            "client": None,
            "server": None,
        }
        pending = [{"type": "http.request", "body": request.body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await done.wait()
            return {"type": "http.disconnect"}

        async def run() -> None:
            try:
                await self.http_app(scope, receive, messages.put)
            finally:
                await messages.put(None)

        task = asyncio.create_task(run())
        status, upload = 0, bytearray()
        try:
            while (message := await messages.get()) is not None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = [
                        *message.get("headers", []),
                        (REPLICA_HEADER.encode(), self.replica_name.encode()),
                    ]
                    message = {**message, "headers": headers}
                elif request.path == _UPLOAD_PATH:
                    upload += message.get("body", b"")
                yield message
            await task
        finally:
            done.set()
            task.cancel()
        if request.path == _UPLOAD_PATH and request.method == "POST" and status == 200:
            await self.hold(json.loads(upload)["id"])


@serve.deployment
class CorpusRouter:
    """The HTTP entry under corpus affinity: forwards each request to the replicas' handle, with
    its corpus key (`corpus_key`) as the multiplexed model id. A plain request handler, not an
    ASGI ingress: Serve allows one of those per application, the replicas'."""

    def __init__(self, replicas: DeploymentHandle, max_body_bytes: int) -> None:
        self.replicas = replicas
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> StreamingResponse:
        declared = request.headers.get("content-length", "0")
        # A body declared too long is left unread: the app answers 413 on its declared length.
        oversized = declared.isdigit() and int(declared) > self.max_body_bytes
        body = b"" if oversized else await request.body()
        forwarded = ForwardedRequest(
            request.method, request.url.path, request.url.query.encode(), request.headers.raw, body
        )
        handle = self.replicas.options(stream=True)
        key = corpus_key(request.method, request.url.path, body)
        if key is not None:
            handle = handle.options(multiplexed_model_id=key)
        messages = handle.answer.remote(forwarded)
        start = await messages.__anext__()

        async def body_parts() -> AsyncIterator[bytes]:
            async for message in messages:
                yield message.get("body", b"")

        response = StreamingResponse(body_parts(), status_code=start["status"])
        response.raw_headers = list(start.get("headers", []))
        return response


def build_app(
    settings: ServerSettings,
    config: ParallelCompConfig | None = None,
    options: ServeOptions | None = None,
) -> serve.Application:
    """The app to `serve.run`: replicas of `settings.model` (the default model when None) with
    engine settings `config`, deployed as `options` say."""
    options = options or ServeOptions()
    replicas = ParallelCompReplica.options(
        autoscaling_config=options.autoscaling_config(),
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options=options.ray_actor_options(),
    ).bind(settings, config or ParallelCompConfig())
    if not options.corpus_affinity:
        return replicas
    return CorpusRouter.options(ray_actor_options={"num_cpus": 0.1}).bind(
        replicas, settings.max_body_bytes
    )


class ServeArgs(CheckedModel):
    """The `key=value` arguments of `serve run parallelcomp_llm.server.ray_serve:app_builder`:
    `ServeOptions` fields, the served `model` and `served_model_name`, and `config`, a JSON
    object of `ParallelCompConfig` fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    served_model_name: str | None = None
    config: str = "{}"
    options: ServeOptions = Field(default_factory=ServeOptions)

    @model_validator(mode="before")
    @classmethod
    def _options(cls, data: Any) -> Any:
        """The `ServeOptions` fields given at the top level, gathered into `options`."""
        if not isinstance(data, dict):
            return data
        names = ServeOptions.model_fields
        options = {key: value for key, value in data.items() if key in names}
        rest = {key: value for key, value in data.items() if key not in names}
        return {**rest, "options": options}


def app_builder(args: dict[str, str]) -> serve.Application:
    """`build_app` from `serve run` arguments (`ServeArgs`)."""
    parsed = ServeArgs(**args)
    settings = ServerSettings(model=parsed.model, model_name=parsed.served_model_name)
    config = ParallelCompConfig(**json.loads(parsed.config))
    return build_app(settings, config, parsed.options)
