"""The ODBC source over real drivers: SQLite3 ODBC and psqlODBC against a PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import socket
import socketserver
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Iterator

import psycopg
import pyodbc
import pytest

from lienthong.connectors import odbc
from lienthong.connectors.odbc import OdbcSource, connection_string, dbms_name
from lienthong.connectors.streams import Cursor, Stream
from lienthong.demo import EXAMPLES_DIR
from lienthong.registry import manifest
from lienthong.sandbox import dossier_db, seed
from tests.conftest import TEST_DATABASE, POSTGRES_URL, sqlite_connection_string

_MANIFEST = manifest.read(EXAMPLES_DIR / "so-tu-phap.yaml")
STREAM = _MANIFEST.source_stream(_MANIFEST.streams[0])


def _seeded(conn_str: str, count: int) -> seed.Seed:
    made = seed.generate(count)
    # Through the source's own connection: on MariaDB the seed's long texts need its UTF-8.
    with closing(OdbcSource(conn_str, STREAM).connect()) as conn:
        dossier_db.insert(conn, made)
    return made


def _pull(source: OdbcSource, after: Cursor | None, size: int) -> list[tuple[Cursor, dict]]:
    return [item for batch in source.read(after, size) for item in batch]


def _dbms(conn_str: str) -> str:
    with pyodbc.connect(conn_str) as conn:
        return dbms_name(conn)


def test_reads_everything_once_in_cursor_order_across_tied_timestamps(dossier_conn_str: str) -> None:
    made = _seeded(dossier_conn_str, 700)
    tied = sum(1 for d in made.dossiers if d.updated_at == seed.MIGRATION_AT)
    assert tied > 100  # the seed must put many rows on one updated_at for this test to mean anything
    source = OdbcSource(dossier_conn_str, STREAM)
    batches = list(source.read(None, 64))
    assert max(len(b) for b in batches) == 64
    rows = [row for batch in batches for _, row in batch]
    assert sorted(r["id"] for r in rows) == sorted(d.id for d in made.dossiers)
    keys = [(r["updated_at"], r["id"]) for r in rows]
    assert keys == sorted(keys)


def test_keyset_pages_read_everything_once_across_tied_timestamps(dossier_conn_str: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries of 150 rows, most of them cut in the middle of the 100+ rows sharing a timestamp."""
    monkeypatch.setattr(odbc, "QUERY_ROWS", 150)
    made = _seeded(dossier_conn_str, 700)
    source = OdbcSource(dossier_conn_str, STREAM)
    assert source.select_sql(_dbms(dossier_conn_str), None).endswith((" LIMIT 150", " FETCH NEXT 150 ROWS ONLY"))
    rows = [row for _, row in _pull(source, None, 64)]
    assert sorted(r["id"] for r in rows) == sorted(d.id for d in made.dossiers)
    keys = [(r["updated_at"], r["id"]) for r in rows]
    assert keys == sorted(keys)


@pytest.mark.parametrize(("dbms", "row_limit"), [
    ("SQLite", "LIMIT 5"), ("MySQL", "LIMIT 5"), ("MariaDB", "LIMIT 5"),
    # PostgreSQL speaks both: given the standard's form, psqlODBC runs it in every test here.
    *[(dbms, "OFFSET 0 ROWS FETCH NEXT 5 ROWS ONLY") for dbms in ("PostgreSQL", "Microsoft SQL Server", "Oracle")],
])
def test_databases_get_the_row_limit_they_speak(dbms: str, row_limit: str) -> None:
    sql = OdbcSource("DRIVER={any}", STREAM).select_sql(dbms, None, 5)
    assert sql.endswith(f' ORDER BY t."updated_at", t."id" {row_limit}')


def test_the_row_limit_follows_the_database_not_the_name_its_driver_goes_by(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A province may register its driver under a name of its own, or name the library's path:
    SQLite's driver behind a name that does not say SQLite still gets LIMIT, which it speaks."""
    monkeypatch.setattr(odbc, "QUERY_ROWS", 150)
    with pyodbc.connect(sqlite_connection_string(tmp_path / "dossiers.db")) as conn:
        dossier_db.create_schema(conn, reset=True)
    made = _seeded(sqlite_connection_string(tmp_path / "dossiers.db"), 400)
    (tmp_path / "motcua-odbc.so").symlink_to(next(Path("/usr/lib").glob("*/odbc/libsqlite3odbc.so")))
    source = OdbcSource(f"DRIVER={tmp_path / 'motcua-odbc.so'};DATABASE={tmp_path / 'dossiers.db'}",
                        STREAM.model_copy(update={"page_size": 100}))
    cuts = source.split(None, 2)
    whole = _pull(source, None, 64)
    assert sorted(r["id"] for _, r in whole) == sorted(d.id for d in made.dossiers)
    assert len(cuts) == 1
    assert [item for a, u in [(None, cuts[0]), (cuts[0], None)] for batch in source.read(a, 64, until=u)
            for item in batch] == whole


def test_long_text_keys_on_one_cursor_value_are_each_read_once(dossier_conn_str: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every keyset page but the first starts after a key sent as a parameter. Sent as UTF-16,
    MariaDB's driver mangled keys of 128 characters and more, and the read ended after one page."""
    monkeypatch.setattr(odbc, "QUERY_ROWS", 40)
    keys = [f"{'hồ-sơ-' * 25}{i:04d}" for i in range(300)]
    assert min(map(len, keys)) > 128
    source = OdbcSource(dossier_conn_str, Stream(table="long_keys", primary_key="code", cursor_field="revision",
                                                 columns=["note"], page_size=50))
    with closing(source.connect()) as conn:
        conn.execute("DROP TABLE IF EXISTS long_keys")
        conn.execute("CREATE TABLE long_keys (code VARCHAR(400) PRIMARY KEY, revision INTEGER NOT NULL, "
                     "note VARCHAR(20))")
        conn.cursor().executemany("INSERT INTO long_keys VALUES (?, 1, ?)", [(key, "x") for key in keys])
        conn.commit()
    # At most 100 batches: a key that does not come back as sent can also start each page where
    # the last began, and the read would never end.
    read = [row["code"] for batch in itertools.islice(source.read(None, 16), 100) for _, row in batch]
    assert sorted(read) == sorted(keys)


def test_cursor_in_the_middle_of_a_tie_resumes_exactly_after_it(dossier_conn_str: str) -> None:
    _seeded(dossier_conn_str, 700)
    source = OdbcSource(dossier_conn_str, STREAM)
    everything = _pull(source, None, 100)
    tied_positions = [i for i, (_, r) in enumerate(everything) if r["updated_at"].startswith("2025-06-30T23:00:00")]
    middle = tied_positions[len(tied_positions) // 2]
    cursor = everything[middle][0]
    rest = _pull(source, Cursor.model_validate(json.loads(json.dumps(cursor.model_dump()))), 50)
    assert [r["id"] for _, r in rest] == [r["id"] for _, r in everything[middle + 1 :]]


def test_ranges_cut_by_split_and_read_apart_give_every_row_once_in_the_order_of_one_pass(
        dossier_conn_str: str) -> None:
    """What partitions pulling one run at once rely on, cuts falling inside runs of tied timestamps."""
    _seeded(dossier_conn_str, 700)
    source = OdbcSource(dossier_conn_str, STREAM.model_copy(update={"page_size": 100}))
    for after in (None, _pull(source, None, 100)[99][0]):  # a first run, and one after a cursor
        whole = _pull(source, after, 64)
        cuts = source.split(after, 3)
        assert len(cuts) == 2 and cuts == sorted(cuts, key=lambda c: (c.parameter(), c.key))
        bounds = [after, *cuts, None]
        ranges = [[item for batch in source.read(a, 64, until=u) for item in batch] for a, u in zip(bounds, bounds[1:])]
        assert [item for part in ranges for item in part] == whole
        assert max(map(len, ranges)) - min(map(len, ranges)) <= 2  # about equal
        assert [part[-1][0] for part in ranges[:-1]] == cuts  # each cut is the last row of its range
    # No range smaller than a page: 150 rows in ranges of 100 at least make two, not three.
    assert len(source.split(whole[-151][0], 3)) == 1
    assert source.split(whole[-1][0], 3) == []  # nothing left to pull: nothing to cut


def test_a_page_after_a_cursor_seeks_the_cursor_index(dossier_conn_str: str) -> None:
    """Keyset pages stay as cheap at the end of a million-row table as at its start only if the
    database starts each one at the cursor in its index, rather than walking up to it."""
    _seeded(dossier_conn_str, 50)
    source = OdbcSource(dossier_conn_str, STREAM)
    after = _pull(source, None, 50)[25][0]
    with closing(source.connect()) as conn:
        cur, dbms = conn.cursor(), dbms_name(conn)
        sql, params = source.select_sql(dbms, after), [after.parameter(), after.parameter(), after.key]
        # A 50-row table is read whole unless told otherwise: what matters is that it can seek.
        if dbms == "SQLite":
            plan = " ".join(row[-1] for row in cur.execute("EXPLAIN QUERY PLAN " + sql, params))
            assert re.search(r"SEARCH t USING (COVERING )?INDEX ix_dossiers_cursor \(updated_at>\?\)", plan), plan
        elif dbms == "PostgreSQL":
            cur.execute("SET enable_seqscan = off")
            plan = " ".join(row[0] for row in cur.execute("EXPLAIN " + sql, params))
            assert re.search(r"Index Cond: \((t\.)?updated_at >= ", plan), plan
        else:  # MariaDB: the index is one the window's range can use
            plan = {row.table: row for row in cur.execute("EXPLAIN " + sql, params)}
            assert "ix_dossiers_cursor" in plan["t"].possible_keys.split(","), plan["t"]


def test_rows_carry_joined_columns_and_children(dossier_conn_str: str) -> None:
    made = _seeded(dossier_conn_str, 50)
    rows = {r["code"]: r for _, r in _pull(OdbcSource(dossier_conn_str, STREAM), None, 20)}
    for d in made.dossiers:
        row = rows[d.code]
        assert [doc["file_name"] for doc in row["documents"]] == [doc[2] for doc in d.documents]
        if d.applicant_id is None:
            assert row["applicant.personal_id"] is None
        else:
            applicant = next(a for a in made.applicants if a.id == d.applicant_id)
            assert row["applicant.personal_id"] == applicant.personal_id
            assert row["applicant.date_of_birth"] == applicant.date_of_birth.isoformat()
        assert dt.datetime.fromisoformat(row["received_at"]) == d.received_at


def test_values_only_travel_as_parameters(dossier_conn_str: str) -> None:
    _seeded(dossier_conn_str, 5)
    source = OdbcSource(dossier_conn_str, STREAM)
    # Led by a date after every row's: MariaDB reads the text as that date (the rest dropped with a
    # warning), SQLite compares it as text, PostgreSQL refuses it; as SQL it would match every row.
    hostile = Cursor(value="2999-01-01' OR '1'='1", kind="str", key="0; DROP TABLE dossiers")
    sql = source.select_sql(_dbms(dossier_conn_str), hostile)
    assert "DROP" not in sql and "'1'='1" not in sql and sql.count("?") == 3
    try:
        rows = _pull(source, hostile, 10)
    except pyodbc.Error:  # PostgreSQL refuses the text as a timestamp: a value, never SQL
        rows = []
    assert rows == []
    with pyodbc.connect(dossier_conn_str) as conn:
        assert dossier_db.count_dossiers(conn) == 5


def test_names_that_are_not_plain_identifiers_are_refused() -> None:
    for bad in ["dossiers; DROP TABLE x", "a b", "1abc", 'x"y', "dossiers--"]:
        with pytest.raises(ValueError, match="not a plain name"):
            Stream(table=bad, primary_key="id", cursor_field="updated_at", columns=["code"])


def test_connection_string_from_an_airflow_connection(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from lienthong.connectors.connection import get_connection

    monkeypatch.setenv("AIRFLOW_CONN_TEST_DOSSIERS", json.dumps(
        {"conn_type": "odbc", "host": "db.example", "port": 5432, "schema": "mot_cua", "login": "u",
         "password": "p", "extra": {"driver": "PostgreSQL Unicode", "sslmode": "require"}}))
    assert connection_string(get_connection("test_dossiers")) == (
        "DRIVER={PostgreSQL Unicode};SERVER=db.example;PORT=5432;DATABASE=mot_cua;UID=u;PWD=p;SSLMODE=require")


class _DroppingProxy(socketserver.ThreadingTCPServer):
    """Forwards to PostgreSQL, but slams the first ``drop`` connections shut as they open, as a
    server that restarts (or an idle-killer catching the handshake) does."""

    daemon_threads = True

    def __init__(self, drop: int) -> None:
        self.drop, self.accepted = drop, 0
        super().__init__(("127.0.0.1", 0), _Forward)


class _Forward(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _DroppingProxy = self.server  # type: ignore[assignment]
        server.accepted += 1
        if server.accepted <= server.drop:
            return
        with socket.create_connection(("127.0.0.1", 5432)) as upstream:
            pumps = [threading.Thread(target=_pump, args=pair, daemon=True)
                     for pair in ((self.request, upstream), (upstream, self.request))]
            for pump in pumps:
                pump.start()
            for pump in pumps:
                pump.join()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def dropping_proxy() -> Iterator[_DroppingProxy]:
    proxy = _DroppingProxy(drop=2)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@pytest.mark.parametrize("dossier_conn_str", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_connection_dropped_while_it_opens_is_opened_again(dossier_conn_str: str,
                                                             dropping_proxy: _DroppingProxy) -> None:
    made = _seeded(dossier_conn_str, 50)
    port = dropping_proxy.server_address[1]
    source = OdbcSource(dossier_conn_str.replace("PORT=5432", f"PORT={port}"), STREAM)

    rows = _pull(source, None, 20)

    assert dropping_proxy.accepted == 3  # two dropped, the third read everything
    assert sorted(row["id"] for _, row in rows) == sorted(d.id for d in made.dossiers)


def _cut_in_three(conn_str: str) -> OdbcSource:
    _seeded(conn_str, 700)
    return OdbcSource(conn_str, STREAM.model_copy(update={"page_size": 100}))


@pytest.mark.parametrize("dossier_conn_str", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_split_whose_connection_drops_while_it_opens_cuts_on_the_next(dossier_conn_str: str,
                                                                         dropping_proxy: _DroppingProxy) -> None:
    direct = _cut_in_three(dossier_conn_str)
    port = dropping_proxy.server_address[1]
    proxied = OdbcSource(dossier_conn_str.replace("PORT=5432", f"PORT={port}"), direct.stream)

    cuts = proxied.split(None, 3)

    assert dropping_proxy.accepted == 3  # two dropped, the third cut
    assert len(cuts) == 2 and cuts == direct.split(None, 3)


@pytest.mark.parametrize("dossier_conn_str", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_split_whose_connection_drops_mid_count_starts_over_on_a_new_one(
        dossier_conn_str: str, caplog: pytest.LogCaptureFixture) -> None:
    """A failover while the split counts: the count is held on a lock until its session is ended,
    so the drop lands mid-query whatever the machine's speed."""
    source = _cut_in_three(dossier_conn_str)
    expected = source.split(None, 3)
    cuts: list[Cursor] = []
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin, psycopg.connect(POSTGRES_URL) as blocker:
        blocker.execute(f'LOCK TABLE "{STREAM.table}" IN ACCESS EXCLUSIVE MODE')
        splitting = threading.Thread(target=lambda: cuts.extend(source.split(None, 3)), daemon=True)
        splitting.start()
        killed = False
        # The count waiting for the lock (psqlODBC sends it as "BEGIN;SELECT COUNT(*) ..."): end
        # its session, as a failover would.
        for _ in range(600):
            killed = any(ok for (ok,) in admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock' AND query LIKE '%%SELECT COUNT(*) FROM%%'", (TEST_DATABASE,)))
            if killed:
                break
            time.sleep(0.05)
        blocker.rollback()  # the lock is let go: the new session's count goes through
        splitting.join(timeout=60)

    assert killed
    assert any("dossier database dropped the connection" in r.getMessage() for r in caplog.records)
    assert len(cuts) == 2 and cuts == expected
