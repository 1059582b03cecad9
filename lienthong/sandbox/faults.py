"""A fault switch in front of every sandbox service, so tests can make a bad day on demand.

The switch is WSGI middleware: it delays or fails a share of the requests before the service
sees them, and exposes ``/_sandbox/faults`` (GET to read, PUT a JSON object to change) so that a
running service, even one in another process, can be switched without a restart.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Callable, Iterable

from pydantic import BaseModel, Field
from werkzeug.wrappers import Request, Response

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FaultConfig(BaseModel):
    latency_ms: float = Field(0.0, ge=0, description="added to every request")
    error_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered with error_status")
    error_status: int = Field(503, ge=400, le=599)


class FaultSwitch:
    """Middleware holding the current :class:`FaultConfig`; ``/health`` and ``/_sandbox/*`` are never faulted."""

    def __init__(self, app: WSGIApp, config: FaultConfig | None = None) -> None:
        self.app = app
        self.config = config or FaultConfig()
        self._lock = threading.Lock()
        self._random = random.Random()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/health":
            return Response("ok")(environ, start_response)
        if path == "/_sandbox/faults":
            return self._admin(Request(environ))(environ, start_response)
        config = self.config
        if path.startswith("/_sandbox/"):
            return self.app(environ, start_response)
        if config.latency_ms:
            time.sleep(config.latency_ms / 1000)
        with self._lock:
            failing = config.error_rate and self._random.random() < config.error_rate
        if failing:
            return Response("injected fault", status=config.error_status)(environ, start_response)
        return self.app(environ, start_response)

    def _admin(self, request: Request) -> Response:
        if request.method == "PUT":
            self.config = FaultConfig.model_validate(request.get_json(force=True))
        return Response(json.dumps(self.config.model_dump()), mimetype="application/json")
