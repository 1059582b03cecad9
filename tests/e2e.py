"""Helpers for the end-to-end tests: a private sandbox world, the accounting every bad-day test
ends with, and a scan of logs for personal data."""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyodbc
import pytest

from lienthong.audit.ledger import ACKNOWLEDGED, PENDING, QUARANTINED, RUNNING, Ledger
from lienthong.audit.verify import verify_runs
from lienthong.demo import EXAMPLES_DIR
from lienthong.registry.store import Registry
from lienthong.sandbox import dossier_db, dossier_system, services
from lienthong.sandbox.portal import sandbox_stats
from lienthong.sandbox.services import Sandbox
from lienthong.settings import Settings, settings
from lienthong.signing.keys import init_keys
from tests.conftest import sqlite_connection_string


@dataclass
class World:
    settings: Settings
    sandbox: Sandbox
    conn_str: str


@contextmanager
def world(home: Path, seed_count: int, examples: tuple[str, ...] = ("so-tu-phap.yaml",),
          state_db: str | None = None) -> Iterator[World]:
    """Keys, the sandbox services as processes, a seeded dossier database, the example connectors
    registered and approved; DAG retries off. The state database is SQLite in ``home`` unless
    ``state_db`` names another."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIENTHONG_HOME", str(home))
        if state_db:
            mp.setenv("LIENTHONG_STATE_DB", state_db)
        else:
            mp.delenv("LIENTHONG_STATE_DB", raising=False)
        mp.setenv("LIENTHONG_TASK_RETRIES", "0")
        s = settings()
        init_keys(s.keys_dir)
        with services.start(s) as sandbox:
            for conn_id, conn in sandbox.connections().items():
                mp.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
            conn_str = sqlite_connection_string(s.sandbox_dir / "dossiers.db")
            if seed_count:
                services.seed_dossiers(s, conn_str, seed_count)
            approve_examples(s, *examples)
            yield World(s, sandbox, conn_str)


def approve_examples(s: Settings, *names: str) -> None:
    """Register and approve example manifests, as an agency and an engineer would."""
    registry = Registry(s.state_db_url)
    for name in names:
        registry.approve(registry.register(EXAMPLES_DIR / name, "e2e-test")[0], "e2e-test")


def account_for_every_dossier(w: World, route: str, run_ids: Iterable[str],
                              dossier_conn_str: str | None = None) -> dict[str, int]:
    """The end of every bad day, from the sandbox's own records and the ledger: each good dossier
    acknowledged and stored by the portal exactly once, each bad one quarantined, none pending,
    no run left open, and the ledger verifying. Returns the figures for the test's message."""
    run_ids = list(run_ids)
    ledger = Ledger(w.settings.state_db_url)
    assert not ledger.open_runs(route), "a run was left open"
    assert all(ledger.run(run_id)["status"] != RUNNING for run_id in run_ids)
    with pyodbc.connect(dossier_conn_str or w.conn_str) as conn:
        answer_key = dossier_db.truth(conn)
    good = {code for code, defect in answer_key.items() if defect is None}
    settled: dict[str, str] = {}
    for run_id in run_ids:
        for outcome in ledger.outcomes(run_id):
            if outcome["outcome"] != PENDING:
                settled[outcome["record_key"]] = outcome["outcome"]
    assert {code for code, kind in settled.items() if kind == ACKNOWLEDGED} == good
    assert {code for code, kind in settled.items() if kind == QUARANTINED} == set(answer_key) - good
    last = ledger.run(run_ids[-1])
    assert last["counts"]["pending"] == 0, last["counts"]
    stats = sandbox_stats(w.sandbox.url("portal"))
    assert stats["dossiers"] == stats["versions"] == len(good), json.dumps(stats)  # stored once each
    audit = verify_runs(ledger, keys_dir=w.settings.keys_dir)
    assert audit.problems == [] and audit.runs_checked == len(run_ids)
    return {"dossiers": len(answer_key), "good": len(good), "runs": len(run_ids), "portal_received": stats["received"],
            "portal_duplicates": stats["duplicates"]}


def secrets_of(s: Settings, dossier_conn_str: str) -> set[str]:
    """What must never reach a log: every personal ID and name, the passwords the platform holds
    for the portal and the dossier systems, and the portal session tokens it was given."""
    found = personal_data(dossier_conn_str) | {services.portal_password(s),
                                                dossier_system.credentials(s.sandbox_dir, dossier_system.COMMUNE)[1]}
    portal_db = s.sandbox_dir / "portal.db"
    if portal_db.exists():
        with sqlite3.connect(portal_db) as conn:
            found |= {token for (token,) in conn.execute("SELECT token FROM sessions")}
    return found


def personal_data(conn_str: str) -> set[str]:
    """Every personal ID and full name in the dossier database."""
    with pyodbc.connect(conn_str) as conn:
        rows = conn.cursor().execute("SELECT personal_id, full_name FROM applicants").fetchall()
    return {value for row in rows for value in row if value}


def leaks(folder: Path, secrets: set[str]) -> list[str]:
    """Lines of any log under ``folder`` that show one of ``secrets``."""
    found = []
    for path in folder.rglob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if any(secret in line for secret in secrets):
                found.append(f"{path.name}: {line[:200]}")
    return found
