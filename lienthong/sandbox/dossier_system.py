"""What the district (SOAP) and commune (REST) sandbox dossier systems share: their own database.

Each keeps the provincial schema (dossier_db) in a SQLite file of its own, seeded by its own agency
with its own code prefix, so that dossiers of the three systems never share a code at the portal.
A page is read with the ODBC source itself, so both services order and resume by
(updated_at, id) exactly as the connectors expect of a real system.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyodbc

from lienthong.connectors.odbc import OdbcSource
from lienthong.connectors.streams import Cursor, Join, Stream, Child
from lienthong.sandbox import dossier_db, seed
from lienthong.sandbox.seed import Seed


@dataclass(frozen=True)
class System:
    """One agency's dossier system: where its data lives and how its dossiers are told apart."""

    name: str
    db_file: str
    agencies: tuple[str, ...]
    code_prefix: str
    seed: int


DISTRICT = System("soap", "district-soap.db", ("HQL_VP", "HQL_TUPHAP", "HQL_TNMT", "HQL_KTHT"), "HQL", 20250702)
COMMUNE = System("rest", "commune-rest.db", ("XNL_UBND", "XNL_TUPHAP", "XNL_DIACHINH"), "XNL", 20250703)
SYSTEMS = {s.name: s for s in (DISTRICT, COMMUNE)}

# The whole record as the systems keep it: what a page returns before each service shapes it.
RECORD = Stream(
    name="dossiers", table="dossiers", primary_key="id", cursor_field="updated_at",
    columns=["code", "procedure_code", "procedure_name", "field_code", "field_name", "agency_code",
             "summary", "received_at", "appointment_at", "finished_at", "returned_at", "status",
             "channel", "note"],
    joins=[Join(table="applicants", alias="applicant", local_key="applicant_id", remote_key="id",
                columns=["personal_id", "full_name", "date_of_birth", "gender", "address", "phone", "email"])],
    children={"documents": Child(table="dossier_documents", foreign_key="dossier_id",
                                 columns=["file_name", "sha256", "digitised"])},
)
APPLICANT = RECORD.joins[0].columns


def connection_string(db_path: Path) -> str:
    return f"DRIVER={{SQLite3}};DATABASE={db_path}"


def seed_system(db_path: Path, system: System, count: int, updated_at: dt.datetime | None = None) -> Seed:
    """Adds ``count`` dossiers after the existing ones; the caller registers the citizens."""
    with pyodbc.connect(connection_string(db_path), autocommit=False) as conn:
        dossier_db.create_schema(conn)
        first_dossier, first_applicant = dossier_db.next_ids(conn)
        made = seed.generate(count, seed=system.seed, first_dossier_id=first_dossier,
                             first_applicant_id=first_applicant, updated_at=updated_at,
                             agencies=system.agencies, code_prefix=system.code_prefix)
        dossier_db.insert(conn, made)
    return made


def truth(db_path: Path) -> dict[str, str | None]:
    with pyodbc.connect(connection_string(db_path)) as conn:
        return dossier_db.truth(conn) if dossier_db.count_dossiers(conn) else {}


def credentials(data_dir: Path, system: System) -> tuple[str, str]:
    """Made once per data folder and kept (0600), like an account the agency issued to the province."""
    path = data_dir / f"{system.db_file.removesuffix('.db')}-users.json"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"lienthong": secrets.token_urlsafe(18)}, handle)
    login, password = next(iter(json.loads(path.read_text()).items()))
    return login, password


class DossierPages:
    """Pages of whole records in (updated_at, id) order, after a position, with a has-more flag."""

    def __init__(self, db_path: Path) -> None:
        self._source = OdbcSource(connection_string(db_path), RECORD)
        with pyodbc.connect(connection_string(db_path), autocommit=False) as conn:
            dossier_db.create_schema(conn)

    def page(self, after: tuple[str, int] | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """One more row than asked is read, so "has more" is known without a second query."""
        cursor = Cursor(value=after[0], kind="datetime", key=after[1]) if after else None
        batches = self._source.read(cursor, limit + 1)
        try:
            rows = [row for _, row in next(batches, [])]
        finally:
            batches.close()
        return rows[:limit], len(rows) > limit
