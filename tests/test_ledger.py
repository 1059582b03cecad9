"""The run ledger on the SQLite default and on PostgreSQL."""

from __future__ import annotations

import datetime as dt

from lienthong.audit.ledger import ACKNOWLEDGED, FAILED, PENDING, QUARANTINED, SUCCESS, Ledger
from lienthong.connectors.streams import Cursor


def _outcome(key: str, outcome: str, version: str | None = None) -> dict:
    return {"record_key": key, "source_id": key[-1], "source_hash": "0" * 64, "version": version,
            "outcome": outcome, "reasons": [{"field": "X", "rule": "r", "message": "X: bad"}] if outcome == QUARANTINED else None,
            "signature": None, "signer": None, "ack_code": 0 if outcome == ACKNOWLEDGED else None,
            "ack_status": "stored" if outcome == ACKNOWLEDGED else None,
            "acked_at": dt.datetime.now(dt.timezone.utc) if outcome == ACKNOWLEDGED else None}


def test_cursor_is_the_last_settled_runs_and_survives_a_run_that_settled_nothing(state_db_url: str) -> None:
    ledger = Ledger(state_db_url)
    assert ledger.cursor("r") is None
    ledger.start_run("run-1", "r", "r", "manual__1", None)
    ledger.start_run("run-1", "r", "r", "manual__1", None)  # a retried extract finds its run
    ledger.settle("run-1", [_outcome("A-1", PENDING)], FAILED, None, {"pulled": 1}, {})
    assert ledger.cursor("r") is None  # nothing settled yet: the next run starts from the beginning

    first = Cursor.of(dt.datetime(2025, 6, 30, 23, 0), 41)
    ledger.start_run("run-2", "r", "r", "manual__2", None)
    ledger.settle("run-2", [_outcome("A-1", ACKNOWLEDGED, "v1"), _outcome("A-2", QUARANTINED)], SUCCESS,
                  first, {"pulled": 2}, {"r": 1})
    assert ledger.cursor("r") == first
    assert ledger.cursor("other") is None
    assert ledger.run("run-2")["counts"] == {"pulled": 2}
    assert [o["record_key"] for o in ledger.outcomes("run-2")] == ["A-1", "A-2"]
    assert ledger.outcomes("run-2")[1]["reasons"][0]["rule"] == "r"


def test_acknowledged_versions_are_what_must_never_be_sent_again(state_db_url: str) -> None:
    ledger = Ledger(state_db_url)
    ledger.start_run("run-1", "r", None, None, None)
    outcomes = [_outcome(f"K-{i}", ACKNOWLEDGED, f"v{i}") for i in range(700)] + [_outcome("Q-1", QUARANTINED)]
    ledger.settle("run-1", outcomes, SUCCESS, None, {}, {})
    keys = [f"K-{i}" for i in range(0, 700, 3)] + ["Q-1", "NEW"]
    assert ledger.acknowledged_versions("r", keys) == {(f"K-{i}", f"v{i}") for i in range(0, 700, 3)}
    assert ledger.acknowledged_versions("another-route", keys) == set()


def test_settling_again_replaces_the_outcomes_instead_of_doubling_them(state_db_url: str) -> None:
    ledger = Ledger(state_db_url)
    ledger.start_run("run-1", "r", None, None, None)
    ledger.settle("run-1", [_outcome("A-1", PENDING)], FAILED, None, {}, {})
    ledger.settle("run-1", [_outcome("A-1", ACKNOWLEDGED, "v")], SUCCESS, None, {}, {})
    assert [o["outcome"] for o in ledger.outcomes("run-1")] == [ACKNOWLEDGED]
