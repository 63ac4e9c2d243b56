"""`RunningServer`: an app served by a real uvicorn server on 127.0.0.1, on a free port, in a
background thread (for tests and examples); it stops when the `with` block ends. `WEATHER_TOOL`:
a tool in OpenAI's format for clients to offer it."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from ..tools import Tool

WEATHER_TOOL = Tool(
    name="get_weather",
    description="The weather of a city.",
    parameters={"properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]},
).openai()
"""A tool in OpenAI's function format, with one bounded argument (calls fit a small answer)."""


class RunningServer:
    """`with RunningServer(app) as server:` serves `app` at `server.url` until the block ends;
    starting and stopping each wait at most `timeout_s` seconds."""

    def __init__(self, app: FastAPI, timeout_s: float = 30.0) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        """The server's root URL (OpenAI clients take `url + "/v1"` as their base URL)."""
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._timeout_s = timeout_s

    def __enter__(self) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + self._timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(self._timeout_s)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"the server did not stop within {self._timeout_s} s")
