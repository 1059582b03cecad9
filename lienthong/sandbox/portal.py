"""The national public-service portal, as the sandbox plays it: login, dossier sync, look-up.

It speaks the public shape of the real interface (a session from ``/api/login``, JSON envelopes
on ``/api/service``) and adds what the mission needs on top: each record of a batch is judged on
its own (schema, signature, version) and answered with its own code, and a version already
stored is acknowledged as a duplicate, never stored twice, so a sink may resend a batch whose
answer it lost. State lives in one SQLite file so that it survives restarts and a second process
(the CLI, a test) sees what the server stored.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import itertools
import json
import multiprocessing
import os
import secrets
import sqlite3
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import jsonschema_rs
import orjson
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from jsonschema import Draft202012Validator, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from lienthong.logs import get_logger
from lienthong.sandbox.faults import FaultConfig, FaultSwitch
from lienthong.schemas import load_json
from lienthong.signing.canonical import canonical_json
from lienthong.signing.jws import CERTIFICATE_UNTRUSTED, SIGNATURE_INVALID, VERSION_MISMATCH, SignatureError
from lienthong.signing.records import SIGNATURE, Unsealer
from lienthong.signing.trust import TrustStore


class _PortalRequest(Request):
    """A full batch of 500 signed dossiers is a few MB: anything far larger is refused (413)."""

    max_content_length = 16 * 1024 * 1024

log = get_logger(__name__)

# Envelope-level codes (the answer's own error_code).
OK = 0
LOGIN_FAILED = 1
SESSION_INVALID = 2
MALFORMED = 3
UNKNOWN_SERVICE = 4
BATCH_TOO_LARGE = 5
# Per-record codes (results[].error_code).
STORED = 0
DUPLICATE = 1
NOT_FOUND = 20
PAYLOAD_INVALID = 12
SIGNATURE_CODES = {SIGNATURE_INVALID: 10, CERTIFICATE_UNTRUSTED: 11, VERSION_MISMATCH: 13}

VIETNAM = dt.timezone(dt.timedelta(hours=7))
MAX_REPORTED_ERRORS = 10

_SCHEMA = load_json("portal_dossier.schema.json")
CONTRACT_MAX_BATCH = _SCHEMA["$defs"]["DongBoHoSoMC"]["properties"]["data"]["maxItems"]


class SchemaCheck(NamedTuple):
    """One definition of the contract, twice: the Python validator takes ~150 µs a record, the
    largest per-record cost at the portal, so a compiled one answers first and the Python one is
    asked only about a record found invalid, for the rule-by-rule messages the sender is shown.
    The compiled answer is trusted only for "valid": where the two differ (Rust's ``\\d`` and ``$``
    are stricter than Python's ``re``; a tuple would pass as an array, but records come from
    ``orjson.loads``), the Python validator's errors, or lack of them, are the verdict."""

    fast: jsonschema_rs.Draft202012Validator
    detailed: Draft202012Validator


@functools.cache
def _validator(definition: str) -> SchemaCheck:
    schema = {**_SCHEMA, "$ref": f"#/$defs/{definition}"}
    # The Python validator has no format checker: ``format`` stays an annotation in both.
    return SchemaCheck(jsonschema_rs.Draft202012Validator(schema, validate_formats=False),
                       Draft202012Validator(schema))


def _pointer(path: Iterable[Any]) -> str:
    """RFC 6901, so the sender can find the field whatever its name contains."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _describe(error: ValidationError) -> list[str]:
    """Where and which rule, without echoing the value: it may be personal data."""
    path = list(error.absolute_path)
    if error.validator == "required":
        return [f"{_pointer([*path, name])}: required" for name in error.validator_value
                if name not in error.instance]
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        return [f"{_pointer([*path, name])}: not allowed" for name in error.instance if name not in known]
    rule = error.validator_value
    shown = rule if isinstance(rule, str) else json.dumps(rule, ensure_ascii=False)
    return [f"{_pointer(path) or '/'}: must satisfy {error.validator} {shown}"]


def schema_errors(validator: SchemaCheck, instance: Any) -> list[str]:
    if validator.fast.is_valid(instance):
        return []
    found = dict.fromkeys(line for error in validator.detailed.iter_errors(instance) for line in _describe(error))
    return sorted(found)[:MAX_REPORTED_ERRORS]


def rejections(records: Sequence[Any], definition: str, trust: TrustStore) -> list[dict[str, Any] | None]:
    """Each record judged on its own by :func:`rejection`, with one :class:`Unsealer` for them
    all: the records of a sealed batch share a signature, checked once."""
    unsealer = Unsealer(trust)
    return [rejection(record, definition, unsealer) for record in records]


def rejection(record: Any, definition: str, unsealer: Unsealer) -> dict[str, Any] | None:
    """The result for a record that cannot be stored (schema ``definition``, then signature),
    None for one that can."""
    errors = schema_errors(_validator(definition), record)
    if errors:
        return _result(record, PAYLOAD_INVALID, "payload_invalid", "; ".join(errors))
    try:
        unsealer(record)
    except SignatureError as exc:
        return _result(record, SIGNATURE_CODES[exc.status], exc.status, exc.reason)
    return None


class RecordJudge:
    """Judges a batch's records, in the request's thread or over worker processes.

    Much of the portal's work is these checks (the compiled schema check, each record's hashes,
    one ECDSA verification per batch in a chunk), and one Python process uses one core: with
    ``processes`` the batches of concurrent pushes are judged on every core, as a real portal
    behind a load balancer would. Workers get the trust store as PEM (certificates do not
    pickle) and judge chunks with the same :func:`rejections`.
    """

    def __init__(self, trust: TrustStore, processes: int = 0) -> None:
        self.trust = trust
        self._pool = None
        if processes:
            self._pool = ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                initargs=([c.public_bytes(Encoding.PEM) for c in trust.roots],
                          [c.public_bytes(Encoding.PEM) for c in trust.crls]))
            self._chunk = max(1, CONTRACT_MAX_BATCH // (2 * processes))
            for _ in range(processes):  # started now, not by the first batch: their imports take seconds
                self._pool.submit(int)

    def __call__(self, definition: str, records: list[Any]) -> list[dict[str, Any] | None]:
        if self._pool is None:
            return rejections(records, definition, self.trust)
        _share_signatures(records)
        chunks = [records[start : start + self._chunk] for start in range(0, len(records), self._chunk)]
        return [verdict for verdicts in self._pool.map(_judge_in_worker, itertools.repeat(definition), chunks)
                for verdict in verdicts]


def _share_signatures(records: list[Any]) -> None:
    """One string object for the batch signature the records of a batch all carry: pickle writes
    an object it has already written as a reference, so a chunk goes to its judge in about a
    third of the bytes (440 KB against 141 KB for 100 sealed dossiers), and sending chunks was a
    fifth of the portal's time under a backfill."""
    shared: dict[str, str] = {}
    for record in records:
        if isinstance(record, dict) and isinstance(signature := record.get(SIGNATURE), str):
            record[SIGNATURE] = shared.setdefault(signature, signature)


_worker_trust: TrustStore | None = None


def _start_worker(roots: list[bytes], crls: list[bytes]) -> None:
    global _worker_trust
    _worker_trust = TrustStore([x509.load_pem_x509_certificate(pem) for pem in roots],
                               [x509.load_pem_x509_crl(pem) for pem in crls])
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()


def _exit_with_parent(parent: int) -> None:
    """A killed portal (SIGKILL: no shutdown) must not leave its workers behind: they hold their
    own queue's write end, so they would wait for work forever."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def _judge_in_worker(definition: str, records: list[Any]) -> list[dict[str, Any] | None]:
    assert _worker_trust is not None, "a judge worker starts with its trust store"
    return rejections(records, definition, _worker_trust)


class PortalStore:
    """Sessions, dossier versions and counters in one SQLite file, one connection per request.

    WAL lets readers (stats, look-ups, another process) proceed while a batch is written; each
    batch is one ``BEGIN IMMEDIATE`` transaction, so concurrent batches serialise on the write
    lock and the (MaHoSo, PhienBan) uniqueness decides which one stored a version first.
    """

    COUNTERS = ("received", "duplicates", "rejected")
    # What each sync service stores: dossier versions, and progress entries. Progress is kept
    # apart from dossiers and may name a dossier the portal does not hold (yet): the two routes
    # run on their own schedules, so a status change can arrive before its dossier.
    TABLES = {"DongBoHoSoMC": "versions", "CapNhatTienDoHoSoMC": "progress"}

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        with self._connect(write=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS sessions (token TEXT PRIMARY KEY, "
                         "username TEXT NOT NULL, expires_at REAL NOT NULL)")
            for table in self.TABLES.values():
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "ma_ho_so TEXT NOT NULL, phien_ban TEXT NOT NULL, record TEXT NOT NULL, "
                             "stored_at TEXT NOT NULL, UNIQUE (ma_ho_so, phien_ban))")
            conn.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            conn.executemany("INSERT OR IGNORE INTO counters VALUES (?, 0)", [(n,) for n in self.COUNTERS])

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            if write:
                conn.execute("BEGIN IMMEDIATE")
            yield conn
            if write:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def open_session(self, username: str, ttl_s: float) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._connect(write=True) as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            conn.execute("INSERT INTO sessions VALUES (?, ?, ?)", (token, username, now + ttl_s))
        return token

    def expire_sessions(self) -> None:
        """Every session ends now (a fault: the token expires mid-run, the portal restarts)."""
        with self._connect(write=True) as conn:
            conn.execute("DELETE FROM sessions")

    def session_valid(self, token: Any) -> bool:
        if not isinstance(token, str):
            return False
        with self._connect() as conn:
            row = conn.execute("SELECT expires_at FROM sessions WHERE token = ?", (token,)).fetchone()
        return row is not None and row[0] > time.time()

    def save(self, records: Sequence[dict[str, Any]], received: int, service: str = "DongBoHoSoMC") -> list[bool]:
        """Store each record unless its version is there already; True where it was stored."""
        table = self.TABLES[service]
        stored_at = dt.datetime.now(VIETNAM).isoformat(timespec="microseconds")
        fresh = []
        with self._connect(write=True) as conn:
            for record in records:
                cursor = conn.execute(
                    f"INSERT OR IGNORE INTO {table} (ma_ho_so, phien_ban, record, stored_at) VALUES (?, ?, ?, ?)",
                    (record["MaHoSo"], record["PhienBan"], canonical_json(record).decode("utf-8"), stored_at))
                fresh.append(cursor.rowcount == 1)
            increments = {"received": received, "duplicates": fresh.count(False),
                          "rejected": received - len(records)}
            conn.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                             [(value, name) for name, value in increments.items()])
        return fresh

    def current(self, code: str) -> dict[str, Any] | None:
        """The latest stored version of a dossier, with how many versions there are."""
        with self._connect() as conn:
            row = conn.execute("SELECT record, phien_ban, stored_at, (SELECT COUNT(*) FROM versions "
                               "WHERE ma_ho_so = ?) FROM versions WHERE ma_ho_so = ? ORDER BY id DESC "
                               "LIMIT 1", (code, code)).fetchone()
        if row is None:
            return None
        record, version, stored_at, versions = row
        return {"record": json.loads(record), "PhienBan": version, "stored_at": stored_at, "versions": versions}

    def stats(self) -> dict[str, int]:
        with self._connect() as conn:
            dossiers, versions = conn.execute(
                "SELECT COUNT(DISTINCT ma_ho_so), COUNT(*) FROM versions").fetchone()
            (progress,) = conn.execute("SELECT COUNT(*) FROM progress").fetchone()
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        return {"dossiers": dossiers, "versions": versions, "progress": progress, **counters}


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _error(code: int, message: str, status: int) -> Response:
    return _json({"error_code": code, "message": message}, status)


class PortalApp:
    """The WSGI application behind the fault switch."""

    def __init__(self, store: PortalStore, trust: TrustStore, users: dict[str, str],
                 session_ttl_s: float, max_batch: int, judges: int = 0) -> None:
        if not 1 <= max_batch <= CONTRACT_MAX_BATCH:
            raise ValueError(f"max_batch must be 1..{CONTRACT_MAX_BATCH}, the contract's limit")
        self.store = store
        self.judge = RecordJudge(trust, judges)
        self.users = users
        self.session_ttl_s = session_ttl_s
        self.max_batch = max_batch
        self._routes = Map([
            Rule("/api/login", methods=["POST"], endpoint="login"),
            Rule("/api/service", methods=["POST"], endpoint="service"),
            Rule("/_sandbox/stats", methods=["GET"], endpoint="stats"),
        ])
        self._services: dict[str, tuple[SchemaCheck, Callable[[list[Any]], Response]]] = {
            "DongBoHoSoMC": (_validator("DongBoHoSoMC"), partial(self._sync, "DongBoHoSoMC", "HoSo")),
            "CapNhatTienDoHoSoMC": (_validator("CapNhatTienDoHoSoMC"),
                                    partial(self._sync, "CapNhatTienDoHoSoMC", "TienDoHoSo")),
            "TraCuuHoSo": (_validator("TraCuuHoSo"), self._look_up),
        }

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = _PortalRequest(environ)
        try:
            endpoint, _ = self._routes.bind_to_environ(environ).match()
            response = getattr(self, f"_{endpoint}")(request)
        except HTTPException as exc:
            response = exc.get_response(environ)
        return response(environ, start_response)

    def _login(self, request: Request) -> Response:
        body = _body(request)
        if not isinstance(body, dict):
            return _error(MALFORMED, "the body must be a JSON object", 400)
        username, password = body.get("username"), body.get("password")
        expected = self.users.get(username) if isinstance(username, str) else None
        if expected is None or not isinstance(password, str) or not hmac.compare_digest(
                expected.encode(), password.encode()):
            log.info("portal login refused")
            return _error(LOGIN_FAILED, "invalid username or password", 401)
        token = self.store.open_session(username, self.session_ttl_s)
        return _json({"session": token, "error_code": OK, "message": "logged in"})

    def _service(self, request: Request) -> Response:
        envelope = _body(request)
        if not isinstance(envelope, dict):
            return _error(MALFORMED, "the body must be a JSON object", 400)
        if not self.store.session_valid(envelope.get("session")):
            return _error(SESSION_INVALID, "session invalid or expired: log in again", 401)
        name = envelope.get("service")
        service = self._services.get(name) if isinstance(name, str) else None
        if service is None:
            return _error(UNKNOWN_SERVICE, f"unknown service {name!r}", 400)
        data = envelope.get("data")
        if isinstance(data, list) and len(data) > self.max_batch:
            return _error(BATCH_TOO_LARGE, f"at most {self.max_batch} records per call", 413)
        validator, handler = service
        errors = schema_errors(validator, envelope)
        if errors:
            return _error(MALFORMED, "; ".join(errors), 400)
        return handler(data)

    def _sync(self, service: str, definition: str, records: list[Any]) -> Response:
        """DongBoHoSoMC, CapNhatTienDoHoSoMC: judge every record, store the good ones, answer each
        in input order."""
        rejections = self.judge(definition, records)
        for rejection in rejections:
            if rejection and rejection["status"] in SIGNATURE_CODES:
                log.info("dossier %s refused: %s", rejection["MaHoSo"], rejection["status"])
        accepted = [record for record, rejection in zip(records, rejections) if rejection is None]
        fresh = self.store.save(accepted, received=len(records), service=service)
        outcomes = iter(fresh)
        results = [rejection or _stored(record, next(outcomes)) for record, rejection in zip(records, rejections)]
        log.info("%s: %d records, %d stored, %d duplicate, %d rejected", service, len(records),
                 fresh.count(True), fresh.count(False), len(records) - len(accepted))
        return _json({"error_code": OK, "message": "processed", "results": results})

    def _look_up(self, queries: list[dict[str, str]]) -> Response:
        """TraCuuHoSo: the current stored version of each dossier, exactly as it was stored."""
        results = []
        for query in queries:
            found = self.store.current(query["MaHoSo"])
            results.append({"MaHoSo": query["MaHoSo"], "error_code": OK, "status": "found", **found}
                           if found else
                           {"MaHoSo": query["MaHoSo"], "error_code": NOT_FOUND, "status": "not_found",
                            "message": "no version of this dossier is stored"})
        return _json({"error_code": OK, "message": "processed", "results": results})

    def _stats(self, request: Request) -> Response:
        return _json(self.store.stats())


def _body(request: Request) -> Any:
    try:
        return orjson.loads(request.get_data())
    except orjson.JSONDecodeError:
        return None


def _result(record: Any, code: int, status: str, message: str) -> dict[str, Any]:
    fields = record if isinstance(record, dict) else {}
    return {"MaHoSo": fields.get("MaHoSo"), "PhienBan": fields.get("PhienBan"),
            "error_code": code, "status": status, "message": message}


def _stored(record: dict[str, Any], fresh: bool) -> dict[str, Any]:
    if fresh:
        return _result(record, STORED, "stored", "stored")
    return _result(record, DUPLICATE, "duplicate", "this version is already stored")


def create_app(
    db_path: Path,
    trust: TrustStore,
    users: dict[str, str],
    session_ttl_s: float = 1800,
    faults: FaultConfig | None = None,
    max_batch: int = 500,
    judges: int = 0,
) -> FaultSwitch:
    """The portal behind its fault switch, ready for :class:`~lienthong.sandbox.http.ServerThread`;
    ``judges`` worker processes check records (none: in the request's thread)."""
    app = PortalApp(PortalStore(db_path), trust, users, session_ttl_s, max_batch, judges)
    return FaultSwitch(app, faults, expire_sessions=app.store.expire_sessions)


def sandbox_stats(base_url: str) -> dict[str, int]:
    """What the portal holds and has seen: how tests and the demo check exactly-once delivery."""
    response = requests.get(f"{base_url.rstrip('/')}/_sandbox/stats", timeout=10)
    response.raise_for_status()
    return response.json()
