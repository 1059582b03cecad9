"""Pulling a stream from a relational source over ODBC (SQLite, PostgreSQL, SQL Server...).

Only identifiers from a validated :class:`Stream` and ``?`` parameters reach the SQL text. Rows
are read in cursor order, in keyset pages of :data:`QUERY_ROWS` (each query starts after the last
row of the one before) handed out ``fetchmany`` batch by batch, so that memory stays bounded
whatever the table size: ODBC drivers commonly hold a query's whole result in the client (the
SQLite driver does, psqlODBC does unless told to declare a cursor), ~1.3 KB a dossier row.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import closing, contextmanager
from typing import Any, Iterator

import pyodbc

from lienthong.connectors.connection import DOSSIER_DB, get_connection
from lienthong.connectors.sources import Probe
from lienthong.connectors.streams import Cursor, Stream
from lienthong.connectors.values import json_safe
from lienthong.logs import get_logger

log = get_logger(__name__)

# A dropped connection is opened again this many times in a row, with backoff and jitter.
RECONNECT_ATTEMPTS = 5
RECONNECT_BACKOFF_S = 0.1
RECONNECT_BACKOFF_MAX_S = 5.0
# SQLSTATEs of a connection the server ended: class 08 (connection exception) and PostgreSQL's
# 57P01-57P03 (terminated by the administrator, crash shutdown, cannot connect now).
_CONNECTION_LOST = ("08", "57P01", "57P02", "57P03")
# Rows per query: a driver holding a result whole holds ~13 MB of dossiers, not the table.
QUERY_ROWS = 10_000
# Databases, as their drivers name them (SQL_DBMS_NAME), that get LIMIT because they do not
# speak SQL:2008's OFFSET ... FETCH (MariaDB only since 10.6); every other one (PostgreSQL, SQL
# Server, Oracle, DB2) gets the standard's form.
_LIMIT_DBMS = ("sqlite", "mysql", "mariadb")
# Databases that read "name" as a string, not as the standard's quoted identifier, unless the
# session's sql_mode says ANSI_QUOTES.
_ANSI_QUOTES_OFF_DBMS = ("mysql", "mariadb")

# SQLite accepts 32766 parameters per statement and SQL Server 2100: stay well below both.
_MAX_IN_PARAMETERS = 500


class ConnectionLost(Exception):
    """The server ended the connection mid-read; the error it gave is the cause."""


def connection_lost(exc: pyodbc.Error) -> bool:
    """Whether ``exc`` says the connection is gone (worth reconnecting), not that the SQL is wrong."""
    state = str(exc.args[0]) if exc.args else ""
    return state.startswith(_CONNECTION_LOST) or "connection has been lost" in str(exc).lower()


def _lost(exc: pyodbc.Error) -> ConnectionLost:
    return ConnectionLost(str(exc.args[0]) if exc.args else type(exc).__name__)


def _wait_or_give_up(exc: ConnectionLost, failures: int) -> None:
    """Pauses before the next attempt after ``failures`` drops in a row, with backoff and jitter, or
    gives up with the driver's own error: a database dropping every connection is down, not flaky."""
    if failures > RECONNECT_ATTEMPTS:
        raise exc.__cause__ from None
    pause = min(RECONNECT_BACKOFF_MAX_S, RECONNECT_BACKOFF_S * 2 ** failures) * random.uniform(0.5, 1)
    log.warning("dossier database dropped the connection (%s); reconnecting in %.1f s, attempt %d of %d",
                exc, pause, failures, RECONNECT_ATTEMPTS)
    time.sleep(pause)


def _alive(conn: pyodbc.Connection) -> bool:
    """Drivers do not all say "connection lost" in a standard way (psqlODBC may report a failed
    internal savepoint), so a failed statement is followed by a trivial one: if that fails too,
    the connection is gone."""
    try:
        conn.rollback()
        conn.cursor().execute("SELECT 1").fetchall()
        return True
    except pyodbc.Error:
        return False


def connection_string(conn: Any) -> str:
    """An ODBC connection string from an Airflow connection, as the odbc provider's hook builds it.

    ``extra.driver`` names the unixODBC driver; ``schema`` is the database (a file path for
    SQLite); any other extra key is passed through as an ODBC attribute.
    """
    extra = dict(conn.extra_dejson)
    driver = extra.pop("driver", None)
    if not driver:
        raise ValueError(f"connection {conn.conn_id!r} has no extra.driver naming the ODBC driver")
    parts = {"DRIVER": f"{{{driver}}}"}
    if conn.host:
        parts["SERVER"] = conn.host
    if conn.port:
        parts["PORT"] = str(conn.port)
    if conn.schema:
        parts["DATABASE"] = conn.schema
    if conn.login:
        parts["UID"] = conn.login
    if conn.password:
        parts["PWD"] = conn.password
    parts.update({key.upper(): str(value) for key, value in extra.items()})
    return ";".join(f"{key}={value}" for key, value in parts.items())


def connection_string_for(conn_id: str = DOSSIER_DB) -> str:
    return connection_string(get_connection(conn_id))


def dbms_name(conn: pyodbc.Connection) -> str:
    """The database behind ``conn`` as its driver names it (``SQL_DBMS_NAME``: "SQLite",
    "PostgreSQL", "Microsoft SQL Server"...). The SQL follows it, not the name the driver was
    registered under in odbcinst.ini, which is the province's choice (or a path to the library)."""
    return conn.getinfo(pyodbc.SQL_DBMS_NAME)


def _page(dbms: str, rows: int, offset: int = 0) -> str:
    if dbms.lower().startswith(_LIMIT_DBMS):
        return f" LIMIT {int(rows)}" + (f" OFFSET {int(offset)}" if offset else "")
    return f" OFFSET {int(offset)} ROWS FETCH NEXT {int(rows)} ROWS ONLY"


def _quote(name: str) -> str:
    return f'"{name}"'


class OdbcSource:
    """A source stream over one ODBC connection; hook-like: usable in a task, the CLI or a test."""

    def __init__(self, connection_string: str, stream: Stream) -> None:
        self._connection_string = connection_string
        self.stream = stream

    @classmethod
    def from_connection(cls, stream: Stream, conn_id: str = DOSSIER_DB) -> "OdbcSource":
        return cls(connection_string_for(conn_id), stream)

    def connect(self) -> pyodbc.Connection:
        """A connection that reads the source's SQL as the standard has it: its names are quoted
        "so", which MySQL and MariaDB take for strings until the session is told otherwise.

        Their text goes out as UTF-8, not pyodbc's UTF-16: MariaDB's Connector/ODBC (Debian 12's
        3.1.15) mangles UTF-16 parameters of 128 characters and more (pyodbc issue 1375), and a
        page started after a mangled key ends the read early (the rest is never read) or repeats."""
        conn = pyodbc.connect(self._connection_string, autocommit=False)
        if dbms_name(conn).lower().startswith(_ANSI_QUOTES_OFF_DBMS):
            conn.setencoding(encoding="utf-8")
            conn.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
        return conn

    @contextmanager
    def _session(self) -> Iterator[pyodbc.Connection]:
        """A connection whose loss, while it opens (a restart, an idle-killer) or mid-use, comes out
        as :class:`ConnectionLost`, which the caller answers by trying again; any other error is
        the driver's own."""
        try:
            conn = self.connect()
        except pyodbc.Error as exc:
            if connection_lost(exc):
                raise _lost(exc) from exc
            raise
        with closing(conn):
            try:
                yield conn
            except pyodbc.Error as exc:
                if connection_lost(exc) or not _alive(conn):
                    raise _lost(exc) from exc
                raise

    def select_sql(self, dbms: str, after: Cursor | None, rows: int | None = None,
                   until: Cursor | None = None) -> str:
        """At most ``rows`` (default :data:`QUERY_ROWS`) after ``after`` and up to ``until``
        (included), in keyset order, in the row-limit syntax of ``dbms`` (see :func:`dbms_name`);
        :meth:`positional` gives the parameters."""
        s = self.stream
        rows = rows or QUERY_ROWS
        base = _quote(s.table)
        leading = [s.primary_key, s.cursor_field]
        rest = [c for c in s.columns if c not in leading]
        selected = [f"t.{_quote(c)}" for c in [*leading, *rest]]
        joins = []
        for join in s.joins:
            selected += [f"{join.alias}.{_quote(c)} AS {_quote(f'{join.alias}__{c}')}" for c in join.columns]
            joins.append(
                f"LEFT JOIN {_quote(join.table)} {join.alias} "
                f"ON {join.alias}.{_quote(join.remote_key)} = t.{_quote(join.local_key)}"
            )
        cursor, key = self._position_columns()
        return (
            f"SELECT {', '.join(selected)} FROM {base} t {' '.join(joins)}{self._window(after, until)} "
            f"ORDER BY {cursor}, {key}{_page(dbms, rows)}"
        )

    @staticmethod
    def positional(after: Cursor | None, until: Cursor | None = None) -> list[Any]:
        """The parameters of :meth:`select_sql`'s window, in its order."""
        return [value for bound in (after, until) if bound is not None
                for value in (bound.parameter(), bound.parameter(), bound.key)]

    def split(self, after: Cursor | None, ranges: int) -> list[Cursor]:
        """The positions that cut the rows after ``after`` into at most ``ranges`` ranges of about
        equal size, each the last row of its range: so that several workers pull one run at once.

        A count, then one query a cut (an offset in the (cursor, key) index); rows written
        after the cut land after the last cut, where the last range, which has no end, reads them
        as a single pull would. No range is smaller than a page (one part), as a run pulled in one
        pass is not split into partitions of less than a part. A connection dropped during the
        cutting (a failover) is opened again, as :meth:`read`'s is, and the cutting starts over:
        no cut is kept until all are made."""
        failures = 0
        while True:
            try:
                return self._split_once(after, ranges)
            except ConnectionLost as exc:
                failures += 1
                _wait_or_give_up(exc, failures)

    def _split_once(self, after: Cursor | None, ranges: int) -> list[Cursor]:
        cursor, key = self._position_columns()
        window, params = self._window(after, None), self.positional(after)
        cuts: list[Cursor] = []
        with self._session() as conn:
            cur, dbms = conn.cursor(), dbms_name(conn)
            count = cur.execute(f"SELECT COUNT(*) FROM {_quote(self.stream.table)} t{window}", params).fetchone()[0]
            size = max(math.ceil(count / max(1, ranges)), self.stream.page_size)
            for offset in range(size - 1, count - 1, size):  # the last row is never a cut: no empty range
                row = cur.execute(f"SELECT {key}, {cursor} FROM {_quote(self.stream.table)} t{window} "
                                  f"ORDER BY {cursor}, {key}{_page(dbms, 1, offset)}", params).fetchone()
                if row is None:  # rows deleted since they were counted: the last range takes the rest
                    break
                cuts.append(Cursor.of(row[1], row[0]))
        return cuts

    def _position_columns(self) -> tuple[str, str]:
        return f"t.{_quote(self.stream.cursor_field)}", f"t.{_quote(self.stream.primary_key)}"

    def _window(self, after: Cursor | None, until: Cursor | None) -> str:
        """The WHERE clause of rows after ``after`` and up to ``until``, each bound optional."""
        cursor, key = self._position_columns()
        # The same rows as "cursor > c OR (cursor = c AND key > k)", but led by a range on the
        # cursor that every database seeks in the (cursor, key) index: under the OR alone SQLite
        # and PostgreSQL walk the index from its start, so each page of a backfill cost more
        # than the one before (at 100,000 rows, a page near the end 6.6 ms against 1.1 ms).
        clauses = ([f"{cursor} >= ? AND ({cursor} > ? OR {key} > ?)"] if after else []) + (
            [f"{cursor} <= ? AND ({cursor} < ? OR {key} <= ?)"] if until else [])
        return f" WHERE {' AND '.join(clauses)}" if clauses else ""

    def read(
        self, after: Cursor | None, batch_size: int | None = None, until: Cursor | None = None
    ) -> Iterator[list[tuple[Cursor, dict[str, Any]]]]:
        """Batches of (cursor, row) after ``after`` (and up to ``until``, a :meth:`split` cut) in
        (cursor, key) order, children attached.

        A connection the server drops (a restart, a failover, an idle-killer), even while it is
        being opened, is opened again and the read goes on after the last batch handed out: the
        keyset order makes that exact, so nothing is skipped or read twice. Only repeated drops
        with no batch in between give up.
        """
        size = batch_size or self.stream.page_size
        failures = 0
        while True:
            try:
                for batch in self._read_once(after, size, until):
                    failures = 0
                    yield batch
                    after = batch[-1][0]
                return
            except ConnectionLost as exc:
                failures += 1
                _wait_or_give_up(exc, failures)

    def _read_once(self, after: Cursor | None, size: int,
                   until: Cursor | None) -> Iterator[list[tuple[Cursor, dict[str, Any]]]]:
        """One connection's reading: keyset pages of :data:`QUERY_ROWS` until one comes back short."""
        with self._session() as conn:
            cur, dbms = conn.cursor(), dbms_name(conn)
            while True:
                cur.execute(self.select_sql(dbms, after, until=until), self.positional(after, until))
                names = [self._column_name(d[0]) for d in cur.description]
                read = 0
                while rows := cur.fetchmany(size):
                    # The key and cursor lead every SELECT list (see select_sql).
                    batch = [
                        (
                            Cursor.of(row[1], row[0]),
                            {name: json_safe(value) for name, value in zip(names, row)},
                        )
                        for row in rows
                    ]
                    self._attach_children(conn, [row for _, row in batch])
                    read += len(batch)
                    after = batch[-1][0]
                    yield batch
                if read < QUERY_ROWS:
                    return

    def columns(self) -> dict[str, list[str]]:
        """The columns each table of the stream really has (the hook's test_connection)."""
        tables = [self.stream.table, *(j.table for j in self.stream.joins)]
        tables += [c.table for c in self.stream.children.values()]
        found: dict[str, list[str]] = {}
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            for table in tables:
                cur.execute(f"SELECT * FROM {_quote(table)} WHERE 1 = 0")
                found[table] = [d[0] for d in cur.description]
        return found

    def probe(self) -> Probe:
        """What the live database offers: the table's columns, joined ``alias.column``, child tables."""
        found = self.columns()
        fields = set(found[self.stream.table])
        for join in self.stream.joins:
            fields.update(f"{join.alias}.{c}" for c in found[join.table])
        children = {name: set(found[child.table]) for name, child in self.stream.children.items()}
        return Probe(fields, children, [f"table {t}: {len(cols)} columns" for t, cols in found.items()])

    @staticmethod
    def _column_name(name: str) -> str:
        return name.replace("__", ".", 1)

    def _attach_children(self, conn: pyodbc.Connection, batch: list[dict[str, Any]]) -> None:
        if not self.stream.children:
            return
        by_key = {row[self.stream.primary_key]: row for row in batch}
        keys = list(by_key)
        cur = conn.cursor()
        for name, child in self.stream.children.items():
            for row in batch:
                row[name] = []
            cols = ", ".join(_quote(c) for c in [child.foreign_key, *child.columns])
            for start in range(0, len(keys), _MAX_IN_PARAMETERS):
                chunk = keys[start : start + _MAX_IN_PARAMETERS]
                cur.execute(
                    f"SELECT {cols} FROM {_quote(child.table)} "
                    f"WHERE {_quote(child.foreign_key)} IN ({', '.join('?' * len(chunk))}) "
                    f"ORDER BY {_quote(child.foreign_key)}, {_quote(child.order_by)}",
                    chunk,
                )
                for fk, *values in cur.fetchall():
                    by_key[fk][name].append(
                        {c: json_safe(v) for c, v in zip(child.columns, values)}
                    )
