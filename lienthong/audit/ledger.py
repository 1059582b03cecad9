"""Runs and per-record outcomes in the state database, through SQLAlchemy.

The ledger holds hashes, dossier codes and reasons, never personal data, so auditors can read
it freely. The incremental cursor is not kept apart: it is the ``cursor_after`` of the route's
latest settled run, so the ledger and the cursor cannot disagree.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any, Iterable, Sequence

from sqlalchemy import (JSON, Column, DateTime, Index, Integer, MetaData, String, Table, Text,
                        create_engine, insert, select, update)
from sqlalchemy.engine import Engine

from lienthong.connectors.streams import Cursor

ACKNOWLEDGED, QUARANTINED, PENDING = "acknowledged", "quarantined", "pending"
RUNNING, SUCCESS, FAILED = "running", "success", "failed"

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("run_id", String(200), primary_key=True),
    Column("route", String(100), nullable=False, index=True),
    Column("airflow_dag_id", String(250)),
    Column("airflow_run_id", String(250)),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(20), nullable=False),
    # none_as_null: "no cursor yet" must be SQL NULL, not the JSON value null, to be filtered.
    Column("cursor_before", JSON(none_as_null=True)),
    Column("cursor_after", JSON(none_as_null=True)),
    Column("counts", JSON),
    Column("quarantine_reasons", JSON),
)

outcomes = Table(
    "record_outcomes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(200), nullable=False, index=True),
    Column("route", String(100), nullable=False),
    Column("record_key", String(100), nullable=False),
    Column("source_id", String(100), nullable=False),
    Column("source_hash", String(64), nullable=False),
    Column("version", String(64)),
    Column("outcome", String(20), nullable=False),
    Column("reasons", JSON),
    Column("signature", Text),
    Column("signer", String(100)),
    Column("ack_code", Integer),
    Column("ack_status", String(40)),
    Column("acked_at", DateTime(timezone=True)),
    Index("ix_outcomes_delivery", "route", "record_key", "version", "outcome"),
)


@lru_cache(maxsize=8)
def engine(url: str) -> Engine:
    """One connection pool per database per process."""
    return create_engine(url, future=True)


class Ledger:
    def __init__(self, url: str) -> None:
        self.engine = engine(url)
        metadata.create_all(self.engine)  # only creates what is missing

    def start_run(self, run_id: str, route: str, dag_id: str | None, airflow_run_id: str | None,
                  cursor_before: Cursor | None) -> None:
        """Idempotent: a retried extract task finds its run already open."""
        with self.engine.begin() as conn:
            if conn.execute(select(runs.c.run_id).where(runs.c.run_id == run_id)).first():
                return
            conn.execute(insert(runs).values(
                run_id=run_id, route=route, airflow_dag_id=dag_id, airflow_run_id=airflow_run_id,
                started_at=_now(), status=RUNNING,
                cursor_before=cursor_before.model_dump() if cursor_before else None,
            ))

    def cursor(self, route: str) -> Cursor | None:
        """Where the next run starts: after the last record the route has settled."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(runs.c.cursor_after)
                .where(runs.c.route == route, runs.c.finished_at.is_not(None), runs.c.cursor_after.is_not(None))
                .order_by(runs.c.finished_at.desc()).limit(1)
            ).first()
        return Cursor.model_validate(row[0]) if row else None

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
        return dict(row) if row else None

    def acknowledged_versions(self, route: str, keys: Sequence[str]) -> set[tuple[str, str]]:
        """(record key, version) pairs the target has already acknowledged: never sent again."""
        found: set[tuple[str, str]] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                rows = conn.execute(
                    select(outcomes.c.record_key, outcomes.c.version).where(
                        outcomes.c.route == route, outcomes.c.outcome == ACKNOWLEDGED,
                        outcomes.c.record_key.in_(chunk))
                )
                found.update((k, v) for k, v in rows)
        return found

    def settle(self, run_id: str, records: Iterable[dict[str, Any]], status: str,
               cursor_after: Cursor | None, counts: dict[str, int],
               reasons: dict[str, int]) -> None:
        """Every record's outcome and the run's close in one transaction: all or nothing."""
        route = self.run(run_id)["route"]
        with self.engine.begin() as conn:
            conn.execute(outcomes.delete().where(outcomes.c.run_id == run_id))
            batch: list[dict[str, Any]] = []
            for record in records:
                batch.append({"run_id": run_id, "route": route, **record})
                if len(batch) == 5000:
                    conn.execute(insert(outcomes), batch)
                    batch = []
            if batch:
                conn.execute(insert(outcomes), batch)
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(
                finished_at=_now(), status=status,
                cursor_after=cursor_after.model_dump() if cursor_after else None,
                counts=counts, quarantine_reasons=reasons,
            ))

    def outcomes(self, run_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(outcomes).where(outcomes.c.run_id == run_id).order_by(outcomes.c.id))
            return [dict(r) for r in rows.mappings()]

    def latest_run(self, route: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.route == route)
                               .order_by(runs.c.started_at.desc()).limit(1)).mappings().first()
        return dict(row) if row else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
