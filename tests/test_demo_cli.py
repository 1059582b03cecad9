"""``lienthong demo`` as a user runs it: a child process, its JSON, then a second run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import sqlite_connection_string
from tests.e2e import leaks, personal_data

pytestmark = pytest.mark.slow


def _demo(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIENTHONG_HOME": str(home), "COLUMNS": "160"}
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW_CONN_")}
    return subprocess.run([sys.executable, "-m", "lienthong.cli", "demo", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_demo_json_accounts_for_every_record_and_a_second_demo_moves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _demo(home, "--records", "300", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["status"] == "success" and summary["seeded"] == {"odbc": 300, "soap": 300, "rest": 300}
    routes = {r["route"]: r for r in summary["routes"]}
    assert set(routes) == {"stp_h40__dossiers", "stp_h40__status", "hql_h40__dossiers", "xnl_h40__dossiers"}
    for r in routes.values():
        assert r["pulled"] == r["acknowledged"] + r["quarantined"] and r["pending"] == 0
        if r["target"] == "dossier_sync":
            key = r["answer_key"]
            assert r["pulled"] == 300 and key["bad_quarantined_for_their_reason"] == key["bad_pulled"] == r["quarantined"] == 9
            assert key["good_quarantined"] == []
    assert summary["portal"]["dossiers"] == sum(r["acknowledged"] for r in routes.values() if r["target"] == "dossier_sync")
    assert summary["portal"]["progress"] == routes["stp_h40__status"]["acknowledged"]

    second = _demo(home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"the portal now holds {summary['portal']['dossiers']:,} dossiers" in second.stderr

    secrets = personal_data(sqlite_connection_string(home / "sandbox" / "dossiers.db"))
    assert leaks(home, secrets) == []
    assert not any(s in first.stdout + second.stdout + second.stderr for s in secrets)
