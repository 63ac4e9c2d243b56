"""`DeclaredBodyLimit`: a request whose `Content-Length` is over the bound is refused at once (413,
in OpenAI's error shape) before routing or reading; the routes' `max_body_size` (FastAPI's)
counts the bytes of every other body as it is read (chunked bodies, bodies longer than
declared), and the error handlers write its 413. (Starlette's limiter alone would answer a
declared oversize in plain text.)"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import APIError


class DeclaredBodyLimit:
    """ASGI middleware refusing a declared body of more than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = Headers(scope=scope).get("content-length", "") if scope["type"] == "http" else ""
        if declared.isdigit() and int(declared) > self.max_bytes:
            refusal = APIError(
                413,
                f"the request body has {declared} bytes, more than this server's limit of "
                f"{self.max_bytes}",
                code="request_too_large",
            )
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
