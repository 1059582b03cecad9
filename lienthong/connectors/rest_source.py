"""Pulling a stream from a REST/JSON resource with cursor pagination.

Within a run the source follows the server's ``next_cursor``. What it hands back as the position,
though, is always the last record's own (cursor field, key): that is what the route saves, and a
server's token may expire or change form. To resume from a saved position the source writes it as
the resource's documented token (base64url JSON of the two fields, see :func:`resume_token`).
"""

from __future__ import annotations

import base64
import json
from contextlib import closing
from typing import Any, Iterator

import requests
from requests.auth import AuthBase, HTTPBasicAuth
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from lienthong.connectors.answers import MAX_ANSWER_BYTES, BadAnswer, json_body
from lienthong.connectors.connection import base_url, get_connection
from lienthong.connectors.pacing import Pacer, paced_session
from lienthong.connectors.soap import is_transient
from lienthong.connectors.sources import Probe, cursor_of, flatten, offered, paged
from lienthong.connectors.streams import Cursor, Stream


class _Bearer(AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def resume_token(cursor: Cursor, stream: Stream) -> str:
    """The ``after`` token for a saved position: ``{"<cursor field>": value, "<key>": key}``."""
    raw = json.dumps({stream.cursor_field: cursor.value, stream.primary_key: cursor.key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


class RestSource:
    """A stream over one REST resource, through one keep-alive session."""

    def __init__(self, base: str, stream: Stream, auth: AuthBase | None = None, timeout: float = 30,
                 max_attempts: int = 5, max_answer_bytes: int = MAX_ANSWER_BYTES,
                 pacer: Pacer | None = None) -> None:
        """``pacer``: the system's quota, for every request (pages and retries); by default none."""
        if not stream.resource:
            raise ValueError(f"stream {stream.name!r} names no REST resource")
        self.url = f"{base.rstrip('/')}{stream.resource}"
        self.stream = stream
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self._session = paced_session(pacer or Pacer())
        self._session.auth = auth
        self._session.headers["Accept"] = "application/json"
        self._retrying = Retrying(stop=stop_after_attempt(max(1, max_attempts)),
                                  wait=wait_random_exponential(multiplier=0.5, max=8),
                                  retry=retry_if_exception(is_transient), reraise=True)

    @classmethod
    def from_connection(cls, stream: Stream, conn_id: str) -> "RestSource":
        """login/password as HTTP Basic, or ``extra.auth: bearer`` to send the password as a token;
        ``extra``: timeout, max_attempts, max_answer_bytes, rate_limit (the system's quota, kept by
        the whole deployment)."""
        conn = get_connection(conn_id)
        extra = conn.extra_dejson
        auth: AuthBase | None = None
        if extra.get("auth") == "bearer":
            auth = _Bearer(conn.password)
        elif conn.login:
            auth = HTTPBasicAuth(conn.login, conn.password or "")
        options = {name: kind(extra[name]) for name, kind in (
            ("timeout", float), ("max_attempts", int), ("max_answer_bytes", int)) if name in extra}
        return cls(base_url(conn), stream, auth, **options, pacer=Pacer.of_connection(conn_id, extra))

    def read(self, after: Cursor | None, batch_size: int | None = None
             ) -> Iterator[list[tuple[Cursor, dict[str, Any]]]]:
        """Pages in (cursor, key) order until ``next_cursor`` is null."""
        return paged(self._pages(after, batch_size or self.stream.page_size), f"GET {self.stream.resource}")

    def _pages(self, after: Cursor | None, size: int) -> Iterator[list[tuple[Cursor, dict[str, Any]]]]:
        token = resume_token(after, self.stream) if after is not None else None
        while True:
            page = self._get({"limit": size, **({"after": token} if token else {})})
            rows = [flatten(item, self.stream) for item in page.get("items") or []]
            if rows:
                yield [(cursor_of(row, self.stream), row) for row in rows]
            token = page.get("next_cursor")
            if not rows or not token:
                return

    def probe(self) -> Probe:
        """The keys the first page's records carry (a nested object gives ``object.key``)."""
        items = self._get({"limit": min(self.stream.page_size, 50)}).get("items") or []
        notes = [f"GET {self.stream.resource}: {len(items)} records looked at"]
        return offered(items, notes)

    def close(self) -> None:
        self._session.close()

    def _get(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._retrying(self._get_once, params)

    def _get_once(self, params: dict[str, Any]) -> dict[str, Any]:
        """Raises :class:`BadAnswer` for an answer that is too large, not JSON or not a page."""
        what = f"GET {self.stream.resource}"
        with closing(self._session.get(self.url, params=params, timeout=self.timeout, stream=True)) as response:
            response.raise_for_status()
            answer = json_body(response, self.max_answer_bytes, what)
        if not isinstance(answer, dict) or not isinstance(answer.get("items", []), list):
            raise BadAnswer(f"{what}: the answer is not a JSON object with an items list")
        return answer
