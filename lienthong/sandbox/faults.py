"""A fault switch in front of every sandbox service, so tests can make a bad day on demand.

The switch is WSGI middleware: it delays or fails a share of the requests before the service
sees them, and exposes ``/_sandbox/faults`` (GET to read the switches and how often each fault
struck, PUT a JSON object to change them) so that a running service, even one in another process,
can be switched without a restart.

The worst faults are the ones *after* the service did its work: a reply that never arrives
(``lose_reply_rate``), a connection cut half-way through the answer (``cut_rate``), a request held
past the client's timeout and then carried out anyway (``stall_rate``). The client cannot tell
whether its request took effect, so only idempotent retries keep it from doubling anything.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from pydantic import BaseModel, Field
from werkzeug.wrappers import Request, Response

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FaultConfig(BaseModel):
    latency_ms: float = Field(0.0, ge=0, description="added to every request")
    error_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered with error_status")
    error_status: int = Field(503, ge=400, le=599)
    stall_rate: float = Field(0.0, ge=0, le=1, description="share of requests held stall_ms, then carried out")
    stall_ms: float = Field(0.0, ge=0)
    lose_reply_rate: float = Field(0.0, ge=0, le=1, description="share carried out whose answer becomes a 504")
    cut_rate: float = Field(0.0, ge=0, le=1, description="share carried out whose answer is cut off half-way")
    expire_sessions_rate: float = Field(0.0, ge=0, le=1, description="share before which every session expires")
    quota_per_s: float = Field(0.0, ge=0, description="requests served in any one second; more get 429 (0: no quota)")


class ConnectionCut(ConnectionResetError):
    """Raised half-way through an answer: the server drops the connection, as a failing proxy does."""


class FaultSwitch:
    """Middleware holding the current :class:`FaultConfig`; ``/health`` and ``/_sandbox/*`` are never faulted."""

    def __init__(self, app: WSGIApp, config: FaultConfig | None = None,
                 expire_sessions: Callable[[], None] | None = None) -> None:
        self.app = app
        self.config = config or FaultConfig()
        self.expire_sessions = expire_sessions
        self._lock = threading.Lock()
        self._random = random.Random()
        self._served: collections.deque[float] = collections.deque()  # when the last second's requests came
        # How many times each fault struck: a test proves its fault happened, not only that all went well.
        self.injected: collections.Counter[str] = collections.Counter()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/health":
            return Response("ok")(environ, start_response)
        if path == "/_sandbox/faults":
            return self._admin(Request(environ))(environ, start_response)
        config = self.config
        if path.startswith("/_sandbox/"):
            return self.app(environ, start_response)
        if config.quota_per_s and self._over_quota(config.quota_per_s):
            return Response("over quota", status=429, headers={"Retry-After": "1"})(environ, start_response)
        if config.latency_ms:
            time.sleep(config.latency_ms / 1000)
        if self._happens("error", config.error_rate):
            return Response("injected fault", status=config.error_status)(environ, start_response)
        if self.expire_sessions is not None and self._happens("expire_sessions", config.expire_sessions_rate):
            self.expire_sessions()
        if self._happens("stall", config.stall_rate):
            time.sleep(config.stall_ms / 1000)
        if self._happens("lose_reply", config.lose_reply_rate):
            _drain(self.app(environ, lambda *args: None))
            return Response("injected fault: the reply was lost", status=504)(environ, start_response)
        if self._happens("cut", config.cut_rate):
            return self._cut(environ, start_response)
        return self.app(environ, start_response)

    def _over_quota(self, per_s: float) -> bool:
        """As a national service's quota: a request beyond ``per_s`` in the last second is turned away."""
        with self._lock:
            now = time.monotonic()
            while self._served and self._served[0] <= now - 1:
                self._served.popleft()
            if len(self._served) >= per_s:
                self.injected["quota"] += 1
                return True
            self._served.append(now)
            return False

    def _happens(self, fault: str, rate: float) -> bool:
        if not rate:
            return False
        with self._lock:
            if self._random.random() >= rate:
                return False
            self.injected[fault] += 1
            return True

    def _cut(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The service's whole answer is made, its headers and first half sent, then the line drops."""
        captured: list[Any] = []
        body = b"".join(_drain(self.app(environ, lambda status, headers, *exc: captured.extend([status, headers]))))
        status, headers = captured
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])

        def half_then_drop() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            connection = environ.get("werkzeug.socket")  # the sandbox's server is werkzeug's
            if connection is not None:
                connection.shutdown(socket.SHUT_RDWR)
            raise ConnectionCut("injected fault: connection cut mid-response")

        return half_then_drop()
    def _admin(self, request: Request) -> Response:
        if request.method == "PUT":
            self.config = FaultConfig.model_validate(request.get_json(force=True))
        with self._lock:
            injected = dict(self.injected)
        # The switches, and beside them how often each fault has struck so far (ignored when PUT back).
        return Response(json.dumps({**self.config.model_dump(), "injected": injected}), mimetype="application/json")


def _drain(answer: Iterable[bytes]) -> list[bytes]:
    """Every chunk of a WSGI answer, its ``close()`` called as the WSGI contract asks."""
    try:
        return list(answer)
    finally:
        close = getattr(answer, "close", None)
        if close is not None:
            close()
