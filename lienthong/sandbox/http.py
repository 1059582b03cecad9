"""Serving a sandbox WSGI app over real HTTP on loopback, in a thread or in the foreground."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any, Callable, Iterable

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Tests and background services keep their output for what matters."""


def build_server(app: WSGIApp, port: int = 0, access_log: bool = False) -> BaseWSGIServer:
    """A threaded server: concurrent clients (verification workers, batched pushes) are the norm."""
    handler = WSGIRequestHandler if access_log else _QuietHandler
    return make_server(HOST, port, app, threaded=True, request_handler=handler)


class ServerThread:
    """A real HTTP server in a background thread, for tests and the in-process demo helpers."""

    def __init__(self, app: WSGIApp, port: int = 0) -> None:
        self.server = build_server(app, port)
        self.port = int(self.server.server_port)
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
