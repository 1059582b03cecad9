"""``lienthong demo`` as a user runs it: a child process, its JSON, then a second run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lienthong.settings import Settings
from tests.conftest import sqlite_connection_string
from tests.e2e import leaks, secrets_of

pytestmark = pytest.mark.slow


def _lienthong(home: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a child process with no connections of ours: as a user's shell runs it."""
    env = {**os.environ, "LIENTHONG_HOME": str(home), "COLUMNS": "160"}
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW_CONN_")}
    return subprocess.run([sys.executable, "-m", "lienthong.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def _demo(home: Path, *args: str) -> subprocess.CompletedProcess:
    return _lienthong(home, "demo", *args)


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
            assert (r["pulled"] == 300
                    and key["bad_quarantined_for_their_reason"] == key["bad_pulled"] == r["quarantined"] == 9)
            assert key["good_quarantined"] == []
    assert summary["portal"]["dossiers"] == sum(r["acknowledged"] for r in routes.values()
                                                if r["target"] == "dossier_sync")
    assert summary["portal"]["progress"] == routes["stp_h40__status"]["acknowledged"]
    assert summary["ledger"] == {"runs_checked": 4, "records_checked": sum(r["pulled"] for r in routes.values()),
                                 "problems": []}

    second = _demo(home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"the portal now holds {summary['portal']['dossiers']:,} dossiers" in second.stderr
    assert "ledger: 8 run(s)" in second.stderr

    # An auditor, later and with no connections set up, verifies the ledger and one run's bundle.
    verified = _lienthong(home, "audit", "verify", "--all")
    assert verified.returncode == 0 and "OK: 8 run(s)" in verified.stdout, verified.stdout[-3000:]
    run_id = routes["hql_h40__dossiers"]["run_id"]
    exported = _lienthong(home, "audit", "export", run_id, "--out", str(tmp_path / "bundles"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    bundle = next((tmp_path / "bundles").iterdir())
    checked = subprocess.run(["sh", "verify.sh"], cwd=bundle, capture_output=True, text=True, timeout=300,
                             env={"PATH": "/usr/bin:/bin"})
    assert (checked.returncode == 0 and "ok: time stamp" in checked.stdout
            and checked.stdout.strip().endswith("VERIFIED")), \
        checked.stdout

    secrets = secrets_of(Settings(home=home, state_db_url=f"sqlite:///{home / 'state.db'}"),
                         sqlite_connection_string(home / "sandbox" / "dossiers.db"))
    assert leaks(home, secrets) == []
    assert not any(s in first.stdout + second.stdout + second.stderr for s in secrets)
