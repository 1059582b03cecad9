"""Calls started no faster than a service's quota, across every worker of the deployment.

The population database, like most national services, allots each agency so many calls a
second; going over earns 429s and, kept up, a blocked account. Backoff only reacts once the
quota is hit, so requests (retries, and loading the service description, included) are spaced
to the quota before they are sent. Every HTTP client built from a connection (the population
verifier, the portal sink, the SOAP and REST sources) sends through a :func:`paced_session`,
which waits only when the connection sets a ``rate_limit``.

The quota is the agency's, so the spacing is the deployment's: a pacer built on the state
database (:class:`SharedSlots`, what a client built from an Airflow connection uses) shares one
timetable with every thread, process and machine pacing under the same name, so Celery workers
and the partitions of a run verifying at once together keep the connection's ``rate_limit``.
Each call reserves the next free slot with one atomic ``UPDATE ... RETURNING`` (SQLite 3.35+ and
PostgreSQL) and sleeps until it. A client built without a shared store (a unit test, a one-off
script) paces its own threads alone (:class:`LocalSlots`).

Both keep one rule: the next free slot is one interval after the later of the last one booked
and now. A slot never starts before now, so a limiter left idle does not owe its callers a burst
of the slots nobody took, and a worker that dies holding a reservation wastes that one slot only.

Clocks. Shared slots are seconds on the state database's clock, read by the statement that
books, which answers how long until the slot starts: a caller only measures that wait on its own
clock, so the machines' clocks need not agree (with callers' clocks, the calls of two machines
came closer than an interval by as much as their clocks disagreed, and one clock far ahead held
every other machine back by as much). What stays between a slot and its call going out is the
time the booking's answer takes to come back, on a local network a millisecond or two.
"""

from __future__ import annotations

import threading
import time
from functools import cached_property
from typing import Any, Mapping, Protocol

import requests
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from sqlalchemy import Column, Float, MetaData, String, Table, case, insert, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from lienthong.audit.ledger import engine
from lienthong.settings import settings

metadata = MetaData()

rate_slots = Table(
    "rate_slots", metadata,
    Column("name", String(200), primary_key=True),  # the limiter: an Airflow connection id
    Column("next_at", Float, nullable=False),  # the database's clock, in seconds, when the next free slot starts
)


class Slots(Protocol):
    """A timetable of evenly spaced slots; ``take`` reserves the next one and answers how many
    seconds from now it starts (0 or less: now)."""

    def take(self, interval: float) -> float: ...


class LocalSlots:
    """The slots of one process, on its monotonic clock: no other client shares them."""

    def __init__(self) -> None:
        self._next = 0.0
        self._lock = threading.Lock()

    def take(self, interval: float) -> float:
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + interval
            return self._next - interval - now


class SharedSlots:
    """The slots of every client pacing under ``name`` in the state database at ``url``.

    Nothing is read or created before the first call, so building a client needs no database.
    On SQLite a booking waits for the database's write lock like any writer, so a ledger settling
    a large run meanwhile delays it (see :func:`lienthong.audit.ledger.engine`) as the quota
    would. On PostgreSQL only the limiter's row is locked, for one statement.
    """

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name

    def take(self, interval: float) -> float:
        """One statement, in autocommit: no lock is held between bookings, nor while a caller
        sleeps until its slot."""
        now = _DatabaseClock()
        booked = _later(rate_slots.c.next_at, now) + interval
        reserve = (update(rate_slots).where(rate_slots.c.name == self.name).values(next_at=booked)
                   .returning(rate_slots.c.next_at, now))
        with self._store.connect() as conn:
            row = conn.execute(reserve).one_or_none()
            if row is None:  # the limiter's first call in this database
                _add(conn, self.name)
                row = conn.execute(reserve).one()
        next_at, at = row
        return next_at - interval - at

    @cached_property
    def _store(self) -> Engine:
        """The ledger's pool for this database, in autocommit, with the slots' table made if
        missing (once a client: a verify task builds one)."""
        store = engine(self.url).execution_options(isolation_level="AUTOCOMMIT")
        try:
            metadata.create_all(store)  # only creates what is missing
        except DBAPIError:  # another process created it between the check and the CREATE (PostgreSQL)
            metadata.create_all(store)
        return store


class _DatabaseClock(FunctionElement[float]):
    """Seconds since the epoch on the database server's clock, when the statement runs."""

    type = Float()
    inherit_cache = True


@compiles(_DatabaseClock, "postgresql")
def _postgresql_clock(element: _DatabaseClock, compiler: Any, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(_DatabaseClock, "sqlite")
def _sqlite_clock(element: _DatabaseClock, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"  # whole milliseconds, the same all statement long


def _later(booked: ColumnElement[float], now: ColumnElement[float]) -> ColumnElement[float]:
    """``max`` in SQL: a CASE, since SQLite's two-argument MAX is PostgreSQL's GREATEST."""
    return case((booked > now, booked), else_=now)


def _add(conn: Connection, name: str) -> None:
    """A slot row at the epoch (free now); a client adding it at the same moment is no error."""
    try:
        conn.execute(insert(rate_slots).values(name=name, next_at=0.0))
    except IntegrityError:
        pass


class Pacer:
    """At most ``per_s`` starts a second, evenly spaced, no bursts; ``None`` or 0: no limit.

    ``slots``: whose timetable the starts are booked in, and so who shares the limit; by default
    this pacer's own (its threads only)."""

    def __init__(self, per_s: float | None = None, slots: Slots | None = None) -> None:
        if per_s is not None and per_s < 0:
            raise ValueError("a rate limit is a number of calls per second, at least 0")
        self.interval = 1 / per_s if per_s else 0.0
        self.slots = slots or LocalSlots()

    @classmethod
    def of_connection(cls, conn_id: str, extra: Mapping[str, Any]) -> "Pacer":
        """The connection's quota, its extra ``rate_limit`` (requests a second; none: no limit),
        kept by the whole deployment: every client built from ``conn_id`` books in one timetable."""
        per_s = extra.get("rate_limit")
        return cls(float(per_s) if per_s is not None else None, SharedSlots(settings().state_db_url, conn_id))

    def wait(self) -> None:
        """Blocks until this caller's turn: each caller takes the next free slot."""
        if not self.interval:
            return
        delay = self.slots.take(self.interval)
        if delay > 0:
            time.sleep(delay)


class PacedAdapter(HTTPAdapter):
    """Every request a session sends through it waits for its slot: the service counts requests,
    not operations, so the service description, its schemas, retries and redirects use the quota
    as calls do."""

    def __init__(self, pacer: Pacer, **pool: Any) -> None:
        super().__init__(**pool)
        self.pacer = pacer

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        self.pacer.wait()
        return super().send(request, *args, **kwargs)


def paced_session(pacer: Pacer, pool_maxsize: int = 10) -> requests.Session:
    """A keep-alive session whose every request, to any host, waits for ``pacer``."""
    session = requests.Session()
    adapter = PacedAdapter(pacer, pool_connections=1, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
