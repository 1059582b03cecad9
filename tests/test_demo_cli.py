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
    assert summary["pulled"] == 300 == summary["acknowledged"] + summary["quarantined"] + summary["pending"]
    assert summary["pending"] == 0 and summary["portal_stored"] == summary["acknowledged"]
    assert summary["quarantined"] == summary["answer_key"]["bad_pulled"]
    assert summary["answer_key"]["bad_quarantined_for_their_reason"] == summary["answer_key"]["bad_pulled"] == 9
    assert summary["answer_key"]["good_quarantined"] == []
    assert summary["quarantine_reasons"] and summary["run_id"].startswith("dossier_sync__")

    second = _demo(home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "pulled 0 = acknowledged 0" in second.stderr
    assert f"the portal now holds {summary['portal_stored']:,} dossiers" in second.stderr

    secrets = personal_data(sqlite_connection_string(home / "sandbox" / "dossiers.db"))
    assert leaks(home, secrets) == []
    assert not any(s in first.stdout + second.stdout + second.stderr for s in secrets)
