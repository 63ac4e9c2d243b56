"""`parallelcomp serve`: an OpenAI-compatible HTTP server over a `ParallelCompEngine`.

`create_app(engine, settings)` builds the FastAPI app (routes in `app`); the other modules each
do one job: `settings` (validated `ServerSettings`), `schemas` (OpenAI's request and response
shapes), `replies` (an `Answer` written in those shapes, whole or as stream chunks),
`answering` (requests run on the engine), `contexts` (uploaded corpora), `metrics`
(Prometheus), `auth` (the API key), `limits` (the body size), `errors` (exceptions as OpenAI's
error responses) and `testing` (a server in a background thread, for tests).

The server needs the `server` extra; importing this package without it raises an `ImportError`
that says how to install it. Importing `parallelcomp_llm` never imports it.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import sse_starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as error:
    raise ImportError(
        f"the server needs {error.name}, which is not installed: "
        "pip install 'parallelcomp-llm[server]'",
        name=error.name,
    ) from error

from .app import create_app
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
