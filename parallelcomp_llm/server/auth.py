"""The API key: a FastAPI dependency that lets a request through only with
`Authorization: Bearer <key>`, compared in constant time."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from .errors import APIError

_BEARER = HTTPBearer(auto_error=False, description="The server's API key (`--api-key`).")


def require_key(key: SecretStr) -> Callable[..., Awaitable[None]]:
    """A dependency that refuses (401) a request without `key` as its bearer token."""
    expected = key.get_secret_value().encode()

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> None:
        if credentials is None:
            message = "missing API key: send it as 'Authorization: Bearer <key>'"
        elif secrets.compare_digest(credentials.credentials.encode(), expected):
            return
        else:
            message = "incorrect API key"
        raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    return check
