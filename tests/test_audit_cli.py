"""``lienthong audit ...`` as an auditor runs it: a real process against a real state database."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from lienthong.settings import PROJECT_ROOT, Settings
from lienthong.signing.keys import init_keys
from tests.audit_runs import three_runs

LIENTHONG = str(PROJECT_ROOT / ".venv" / "bin" / "lienthong")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A data folder with keys and three sealed runs; the tests that tamper copy the database."""
    root = tmp_path_factory.mktemp("audit-home")
    s = Settings(home=root, state_db_url=f"sqlite:///{root / 'state.db'}")
    init_keys(s.keys_dir)
    three_runs(s.state_db_url, s.keys_dir)
    return s


def audit(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIENTHONG_HOME": str(s.home), "LIENTHONG_STATE_DB": s.state_db_url}
    return subprocess.run([LIENTHONG, "audit", *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_runs_show_and_trace(home: Settings) -> None:
    runs = json.loads(audit(home, "runs", "--json").stdout)
    assert [r["run_id"] for r in runs] == ["run-3", "run-2", "run-1"] and all(r["sealed"] for r in runs)
    shown = audit(home, "show", "run-1")
    assert shown.returncode == 0 and "H40-1" in shown.stdout and "quarantined" in shown.stdout
    assert "001******345" in shown.stdout and "001090012345" not in shown.stdout
    assert "records are shown" not in shown.stdout  # the whole run fits: no note of a total
    detail = json.loads(audit(home, "show", "run-1", "--json").stdout)
    assert [o["leaf_index"] for o in detail["outcomes"]] == [0, 1, 2, 3, 4] and detail["outcomes_total"] == 5
    assert [o["record_key"] for o in detail["quarantined"]] == ["H40-1"] and detail["quarantined_total"] == 1
    traced = audit(home, "trace", "H40-3")
    assert traced.returncode == 0
    assert "run run-1" in traced.stdout and "run run-2" in traced.stdout and "proof to root" in traced.stdout
    assert "INVALID" not in traced.stdout
    assert audit(home, "show", "no-such-run").returncode == 1


def test_verify_names_the_tampered_record_and_exits_1(home: Settings, tmp_path: Path) -> None:
    copy = Settings(home=home.home, state_db_url=f"sqlite:///{tmp_path / 'state.db'}")
    (tmp_path / "state.db").write_bytes((home.home / "state.db").read_bytes())
    from lienthong.audit.ledger import Ledger

    with Ledger(copy.state_db_url).engine.begin() as conn:
        conn.execute(text("UPDATE record_outcomes SET ack_status = 'rejected' WHERE record_key = 'H40-5'"))
    done = audit(copy, "verify", "--all")
    assert done.returncode == 1
    assert "run run-2, record H40-5: record_changed" in done.stdout
    assert "FAILED" in done.stdout


def test_export_writes_a_bundle(home: Settings, tmp_path: Path) -> None:
    done = audit(home, "export", "run-2", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run-2" / "verify.sh").exists() and (tmp_path / "run-2" / "manifest.p7s").stat().st_size > 100
