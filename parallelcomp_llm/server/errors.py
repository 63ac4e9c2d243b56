"""Errors as OpenAI's error responses: `{"error": {"message", "type", "param", "code"}}`.

`APIError` is what the server itself refuses with; `api_error` maps any exception to one (the
engine's errors by class, an unexpected one to 500, logged); `install_error_handlers` makes
FastAPI answer every error in this shape, malformed JSON and validation failures included.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    ContextTooLongError,
    DeviceMemoryError,
    EngineBusyError,
    InvalidInputError,
    ParallelCompError,
    RequestCancelledError,
    RequestTimeoutError,
)

logger = logging.getLogger("parallelcomp_llm.server")

_ENGINE_ERRORS: list[tuple[type[ParallelCompError], int, str, str]] = [
    (EngineBusyError, 429, "rate_limit_error", "engine_busy"),
    (RequestTimeoutError, 408, "timeout_error", "request_timeout"),
    (ContextTooLongError, 400, "invalid_request_error", "context_length_exceeded"),
    (InvalidInputError, 400, "invalid_request_error", "invalid_input"),
    (DeviceMemoryError, 503, "server_error", "out_of_memory"),
    (RequestCancelledError, 503, "server_error", "request_cancelled"),
]
"""The engine's errors the caller can act on, most specific first; any other is a 500."""


class APIError(Exception):
    """A refusal: HTTP `status`, OpenAI's error `type` and `code`, the request `param` at fault,
    and extra response `headers`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The error in OpenAI's shape (also an SSE event's data, for errors mid-stream)."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error(error: BaseException) -> APIError:
    """The refusal that answers `error`: itself, an engine error by class, else a 500 (logged
    with its traceback)."""
    if isinstance(error, APIError):
        return error
    for kind, status, type_, code in _ENGINE_ERRORS:
        if isinstance(error, kind):
            return APIError(status, str(error), type=type_, code=code)
    logger.error("unexpected error answering a request", exc_info=error)
    return APIError(500, "the server failed to answer this request", code="internal_error")


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """Malformed JSON, or a body that does not fit the route's schema: 400, naming the first
    parameter at fault."""
    problems = error.errors()
    if problems and problems[0]["type"] == "json_invalid":
        message = f"the request body is not valid JSON: {problems[0]['ctx']['error']}"
        return APIError(400, message, code="invalid_json").response()
    places = [".".join(str(p) for p in problem["loc"] if p != "body") for problem in problems]
    summary = "; ".join(
        f"{place or 'body'}: {problem['msg']}" for place, problem in zip(places, problems)
    )
    param = places[0] if places and places[0] else None
    return APIError(400, summary, param=param, code="invalid_value").response()


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's own refusals (unknown route, wrong method, body over the limit)."""
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    refusal = APIError(
        error.status_code,
        str(error.detail),
        code=codes.get(error.status_code),
        headers=error.headers,
    )
    return refusal.response()


async def _error(request: Request, error: Exception) -> JSONResponse:
    return api_error(error).response()


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` in OpenAI's shape: `APIError` and the engine's errors as
    handled errors, any other exception as a 500, logged (by Starlette's last-resort handler,
    which then re-raises it to the ASGI server)."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for kind in (APIError, ParallelCompError, Exception):
        app.add_exception_handler(kind, _error)
