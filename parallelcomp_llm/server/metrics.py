"""Prometheus metrics of one app, in a registry of its own (never the global one): requests by
route and status (`RequestCounter`, an ASGI middleware), tokens in and out, time to first token,
context-cache hits, and the engine's queue depth and the uploaded corpora, read when scraped."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..answer import Answer

TIME_TO_FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds; up to minutes, for the prefill of long corpora."""


class ServerMetrics:
    """The metrics of one server; `queue_depth` and `uploaded_contexts` are read when scraped."""

    def __init__(self, queue_depth: Callable[[], int], uploaded_contexts: Callable[[], int]):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "parallelcomp_requests",
            "HTTP requests answered, by route template and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "parallelcomp_prompt_tokens",
            "Tokens of the answered prompts and contexts.",
            registry=registry,
        )
        self.completion_tokens = Counter(
            "parallelcomp_completion_tokens", "Tokens generated.", registry=registry
        )
        self.context_cache_hits = Counter(
            "parallelcomp_context_cache_hits",
            "Answers whose context's encoded chunks were reused (no chunk prefill).",
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "parallelcomp_time_to_first_token_seconds",
            "Seconds from a completion request's arrival to its first text.",
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        Gauge(
            "parallelcomp_queue_depth", "Requests waiting for the model.", registry=registry
        ).set_function(queue_depth)
        Gauge(
            "parallelcomp_uploaded_contexts",
            "Corpora kept by POST /v1/contexts.",
            registry=registry,
        ).set_function(uploaded_contexts)

    def answered(self, answer: Answer) -> None:
        """Count the tokens of a finished answer, and whether its context was reused."""
        self.prompt_tokens.inc(answer.stats.input_tokens)
        self.completion_tokens.inc(answer.stats.new_tokens)
        if answer.stats.context_cache_hit:
            self.context_cache_hits.inc()

    def exposition(self) -> Response:
        """The metrics in Prometheus' text format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestCounter:
    """ASGI middleware counting every HTTP request by its route's template (`unmatched` when no
    route was reached: an unknown path, a body refused by its declared length) and the status it
    was answered with (500 when it raised before answering)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
