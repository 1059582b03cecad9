"""The provincial one-stop ("một cửa") dossier database, reached like the real ones: over ODBC.

The DDL is portable (SQLite, PostgreSQL) so the same seed runs on the embedded default and on a
server; ``sandbox_truth`` is the sandbox's own answer key, never read by a connector.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable, Sequence

import pyodbc

from lienthong.sandbox.seed import Dossier, Seed

DDL = [
    """CREATE TABLE applicants (
        id INTEGER PRIMARY KEY, personal_id VARCHAR(12), full_name VARCHAR(200) NOT NULL,
        date_of_birth DATE, gender CHAR(1), address VARCHAR(300), phone VARCHAR(20),
        email VARCHAR(100))""",
    """CREATE TABLE dossiers (
        id INTEGER PRIMARY KEY, code VARCHAR(50) NOT NULL UNIQUE,
        procedure_code VARCHAR(20) NOT NULL, procedure_name VARCHAR(500),
        field_code VARCHAR(50), field_name VARCHAR(300), agency_code VARCHAR(50) NOT NULL,
        applicant_id INTEGER REFERENCES applicants(id), summary VARCHAR(2000),
        received_at TIMESTAMP NOT NULL, appointment_at TIMESTAMP, finished_at TIMESTAMP,
        returned_at TIMESTAMP, status VARCHAR(50) NOT NULL, channel VARCHAR(10) NOT NULL,
        note VARCHAR(1000), updated_at TIMESTAMP NOT NULL)""",
    "CREATE INDEX ix_dossiers_cursor ON dossiers (updated_at, id)",
    """CREATE TABLE dossier_documents (
        id INTEGER PRIMARY KEY, dossier_id INTEGER NOT NULL REFERENCES dossiers(id),
        file_name VARCHAR(255) NOT NULL, sha256 CHAR(64) NOT NULL, digitised SMALLINT NOT NULL)""",
    "CREATE INDEX ix_documents_dossier ON dossier_documents (dossier_id)",
    """CREATE TABLE dossier_history (
        id INTEGER PRIMARY KEY, dossier_id INTEGER NOT NULL REFERENCES dossiers(id),
        handler VARCHAR(200), position VARCHAR(200), department VARCHAR(200),
        handled_at TIMESTAMP NOT NULL, content VARCHAR(2000), status VARCHAR(50) NOT NULL)""",
    "CREATE INDEX ix_history_dossier ON dossier_history (dossier_id)",
    "CREATE TABLE sandbox_truth (dossier_code VARCHAR(50) PRIMARY KEY, defect VARCHAR(50))",
]

_TABLES = ("sandbox_truth", "dossier_history", "dossier_documents", "dossiers", "applicants")


def _has_schema(conn: pyodbc.Connection) -> bool:
    return any(row.table_name.lower() == "dossiers" for row in conn.cursor().tables(tableType="TABLE"))


def create_schema(conn: pyodbc.Connection, reset: bool = False) -> None:
    cur = conn.cursor()
    if reset:
        for table in _TABLES:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
    if reset or not _has_schema(conn):
        for statement in DDL:
            cur.execute(statement)
    conn.commit()


def count_dossiers(conn: pyodbc.Connection) -> int:
    if not _has_schema(conn):
        return 0
    return int(conn.cursor().execute("SELECT COUNT(*) FROM dossiers").fetchone()[0])


def next_ids(conn: pyodbc.Connection) -> tuple[int, int]:
    """Where a new seed continues: the next dossier id and the next applicant id."""
    cur = conn.cursor()
    dossier = cur.execute("SELECT COALESCE(MAX(id), 0) FROM dossiers").fetchone()[0]
    applicant = cur.execute("SELECT COALESCE(MAX(id), 0) FROM applicants").fetchone()[0]
    return int(dossier) + 1, int(applicant) + 1


def insert(conn: pyodbc.Connection, seed: Seed) -> None:
    """One transaction, so a seed is all there or not at all."""
    cur = conn.cursor()
    _many(cur, "applicants", ["id", "personal_id", "full_name", "date_of_birth", "gender", "address",
                              "phone", "email"],
          ((a.id, a.personal_id, a.full_name, a.date_of_birth, a.gender, a.address, a.phone,
            a.email) for a in seed.applicants))
    _many(cur, "dossiers", ["id", "code", "procedure_code", "procedure_name", "field_code",
                            "field_name", "agency_code", "applicant_id", "summary", "received_at",
                            "appointment_at", "finished_at", "returned_at", "status", "channel",
                            "note", "updated_at"],
          (_dossier_row(d) for d in seed.dossiers))
    _many(cur, "dossier_documents", ["id", "dossier_id", "file_name", "sha256", "digitised"],
          (doc for d in seed.dossiers for doc in d.documents))
    _many(cur, "dossier_history", ["id", "dossier_id", "handler", "position", "department",
                                   "handled_at", "content", "status"],
          (h for d in seed.dossiers for h in d.history))
    _many(cur, "sandbox_truth", ["dossier_code", "defect"],
          ((d.code, d.defect) for d in seed.dossiers))
    conn.commit()


def _dossier_row(d: Dossier) -> tuple:
    return (d.id, d.code, d.procedure_code, d.procedure_name, d.field_code, d.field_name,
            d.agency_code, d.applicant_id, d.summary, d.received_at, d.appointment_at,
            d.finished_at, d.returned_at, d.status, d.channel, d.note, d.updated_at)


def _many(cur: pyodbc.Cursor, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    batch: list[tuple] = []
    for row in rows:
        batch.append(tuple(row))
        if len(batch) == 5000:
            cur.executemany(sql, batch)
            batch.clear()
    if batch:
        cur.executemany(sql, batch)


def truth(conn: pyodbc.Connection) -> dict[str, str | None]:
    """Dossier code -> the defect seeded into it (None for a good dossier)."""
    rows = conn.cursor().execute("SELECT dossier_code, defect FROM sandbox_truth").fetchall()
    return {code: defect for code, defect in rows}


def touch(conn: pyodbc.Connection, codes: Sequence[str], when: dt.datetime) -> None:
    """An officer's edit of existing dossiers: the note changes and updated_at with it."""
    cur = conn.cursor()
    note = f"Bổ sung ghi chú lúc {when:%H:%M %d/%m/%Y}"
    cur.executemany(
        "UPDATE dossiers SET note = ?, updated_at = ? WHERE code = ?",
        [(note, when, code) for code in codes],
    )
    conn.commit()
