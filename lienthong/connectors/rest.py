"""The sink to the national portal: pushes batches of sealed records, returns one ack per record.

Resending is always safe: the portal keys every record version by (MaHoSo, PhienBan) and answers
a version it already holds as a duplicate. So whenever an answer is lost (timeout, 5xx, a cut
connection) the sink simply sends the same batch again, with backoff, and a batch that still has
no answer after the last attempt stays pending for the next run (:class:`PortalUnavailable`).
A sink keeps one HTTP session and one portal session: use one per thread (``concurrency`` says how
many the connection allows at once).
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from typing import Any, Sequence

import orjson
import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from lienthong.connectors.answers import MAX_ANSWER_BYTES, BadAnswer, json_body
from lienthong.connectors.connection import PORTAL, base_url, get_connection
from lienthong.connectors.pacing import Pacer, paced_session
from lienthong.logs import get_logger

log = get_logger(__name__)

# The portal's answer codes the sink acts on (see lienthong.sandbox.portal for the full table).
_OK = 0
_DUPLICATE = 1
_SESSION_INVALID = 2


@dataclass(frozen=True)
class Ack:
    """The portal's answer for one record."""

    MaHoSo: str | None
    PhienBan: str | None
    error_code: int
    status: str
    message: str = ""

    @property
    def acknowledged(self) -> bool:
        """Stored now or before: either way the portal holds this version."""
        return self.error_code in (_OK, _DUPLICATE)


class PortalUnavailable(Exception):
    """No usable answer within the retry budget; the batch stays pending and may be resent as is."""


class PortalError(Exception):
    """The portal answered, but refused the call itself (credentials, envelope, batch size)."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(f"portal error {error_code}: {message}")
        self.error_code = error_code


class _Transient(Exception):
    """An answer worth waiting for: overload, a gateway hiccup, a network fault."""


def _acks(results: Any, batch: Sequence[dict[str, Any]]) -> list[Ack]:
    """One ack per record, checked to answer the batch record for record, in order."""
    if not isinstance(results, list) or len(results) != len(batch) or any(
            not isinstance(result, dict) or result.get("MaHoSo") != record.get("MaHoSo")
            or type(result.get("error_code")) is not int for result, record in zip(results, batch)):
        raise PortalError(-1, "the answer does not match the batch record for record")
    return [Ack(r.get("MaHoSo"), r.get("PhienBan"), r["error_code"], str(r.get("status", "")),
                str(r.get("message", ""))) for r in results]


class PortalSink:
    """Hook-like client of the portal's REST interface."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        batch_size: int = 200,
        timeout: float = 30,
        max_attempts: int = 5,
        backoff_max: float = 30,
        backoff_initial: float = 0.5,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        concurrency: int = 4,
        pacer: Pacer | None = None,
    ) -> None:
        """``pacer``: the portal's quota, for every request (logins, calls and retries); by default
        none. Built from a connection, the sinks of push's threads, partitions and workers share it."""
        self.base_url = base_url.rstrip("/")
        self.concurrency = max(1, concurrency)
        self.max_answer_bytes = max_answer_bytes
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_attempts = max_attempts
        self._credentials = {"username": username, "password": password}
        self._http = paced_session(pacer or Pacer())
        self._session: str | None = None
        self._retrying = Retrying(
            stop=stop_after_attempt(max_attempts),
            wait=wait_random_exponential(multiplier=backoff_initial, max=backoff_max),
            retry=retry_if_exception_type(_Transient),
            before_sleep=self._log_retry,
            reraise=True,
        )

    @classmethod
    def from_connection(cls, conn_id: str = PORTAL) -> "PortalSink":
        """Endpoint and credentials from the Airflow connection; tuning from its extras, the portal's
        quota (``rate_limit``) kept by the whole deployment."""
        conn = get_connection(conn_id)
        extra = conn.extra_dejson
        casts = {"batch_size": int, "timeout": float, "max_attempts": int, "backoff_max": float,
                 "backoff_initial": float, "max_answer_bytes": int, "concurrency": int}
        tuning = {key: cast(extra[key]) for key, cast in casts.items() if key in extra}
        return cls(base_url(conn), conn.login, conn.password, **tuning, pacer=Pacer.of_connection(conn_id, extra))

    def push(self, batch: Sequence[dict[str, Any]], service: str = "DongBoHoSoMC") -> list[Ack]:
        """One batch of sealed records to a sync service (DongBoHoSoMC dossiers,
        CapNhatTienDoHoSoMC progress); acks in input order."""
        if len(batch) > self.batch_size:
            raise ValueError(f"batch of {len(batch)} records is over batch_size {self.batch_size}")
        if not batch:
            return []
        answer = self._call(service, list(batch), isUpdating=False)
        acks = _acks(answer.get("results"), batch)
        acknowledged = sum(ack.acknowledged for ack in acks)
        log.info("pushed %d records: %d acknowledged, %d refused", len(acks), acknowledged,
                 len(acks) - acknowledged)
        return acks

    def lookup(self, codes: Sequence[str]) -> list[dict[str, Any]]:
        """TraCuuHoSo: per code, the current stored record, its version and history size."""
        results: list[dict[str, Any]] = []
        for start in range(0, len(codes), self.batch_size):
            chunk = codes[start:start + self.batch_size]
            results.extend(self._call("TraCuuHoSo", [{"MaHoSo": code} for code in chunk])["results"])
        return results

    def check(self) -> None:
        """Log in afresh: the connection's ``test_connection``."""
        self._login()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "PortalSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _login(self) -> None:
        answer = self._post("/api/login", self._credentials)
        if answer.get("error_code") != _OK or not isinstance(answer.get("session"), str):
            raise PortalError(int(answer.get("error_code", -1)), str(answer.get("message", "login refused")))
        self._session = answer["session"]
        log.info("logged in to the portal at %s", self.base_url)

    def _call(self, service: str, data: list[Any], **fields: Any) -> dict[str, Any]:
        """One service call; an expired session is renewed and the call resent.

        At most ``max_attempts`` renewals: a portal that keeps ending sessions (a restart, or a
        storm of expiries while several sinks push at once, each loss ending everyone's) is
        treated as unavailable, so the batch stays pending for the next run instead of failing
        the run as if the portal had refused it.
        """
        def send() -> dict[str, Any]:
            return self._post("/api/service", {"session": self._session, "service": service, **fields,
                                               "data": data})

        if self._session is None:
            self._login()
        answer = send()
        for _ in range(self.max_attempts):
            if answer.get("error_code") != _SESSION_INVALID:
                break
            log.info("portal session expired; logging in again")
            self._login()
            answer = send()
        if answer.get("error_code") == _SESSION_INVALID:
            raise PortalUnavailable(f"the portal ended the session {self.max_attempts + 1} times in a row")
        if answer.get("error_code") != _OK:
            raise PortalError(int(answer.get("error_code", -1)), str(answer.get("message", "")))
        return answer

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._retrying(self._post_once, path, body)
        except _Transient as exc:
            raise PortalUnavailable(f"portal {path}: {exc} (gave up after {self.max_attempts} attempts)") from exc

    def _post_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(f"{self.base_url}{path}", data=orjson.dumps(body), stream=True,
                                       headers={"Content-Type": "application/json"}, timeout=self.timeout)
            with closing(response):
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Transient(f"HTTP {response.status_code}")
                answer = json_body(response, self.max_answer_bytes, f"POST {path}")
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(type(exc).__name__) from exc
        except BadAnswer as exc:
            raise PortalError(-1, f"HTTP {response.status_code}: {exc}") from None
        if not isinstance(answer, dict):
            raise PortalError(-1, f"HTTP {response.status_code} without a JSON object as the answer")
        return answer

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        log.warning("portal call failed (%s); attempt %d, retrying", state.outcome.exception()
                    if state.outcome else "?", state.attempt_number)
