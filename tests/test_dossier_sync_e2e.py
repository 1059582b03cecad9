"""The dossier and status routes of the ODBC example connector, run through Airflow against the
sandbox, checked record by record."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyodbc
import pytest
import requests

from lienthong.audit.ledger import Ledger
from lienthong.audit.verify import verify_runs
from lienthong.connectors.rest import PortalSink
from lienthong.demo import run_routes
from lienthong.sandbox import dossier_db, seed, services
from lienthong.sandbox.portal import sandbox_stats
from lienthong.signing.records import unseal
from lienthong.signing.keys import load_signer, load_trust_store
from tests.e2e import leaks, secrets_of, world

pytestmark = pytest.mark.slow
ROUTE = "stp_h40__dossiers"


def test_every_record_ends_acknowledged_or_quarantined_and_reruns_send_nothing(tmp_path: Path) -> None:
    with world(tmp_path / "home", 400) as w:
        ledger = Ledger(w.settings.state_db_url)
        run = run_routes(w.settings, [ROUTE])[0]
        assert (run["status"], run["dag_run_state"]) == ("success", "success")
        counts = run["counts"]
        assert counts["pulled"] == 400 == counts["acknowledged"] + counts["quarantined"] + counts["pending"]
        assert counts["pending"] == 0

        with pyodbc.connect(w.conn_str) as conn:
            answer_key = dossier_db.truth(conn)
        outcomes = {o["record_key"]: o for o in ledger.outcomes(run["run_id"])}
        assert set(outcomes) == set(answer_key)
        good = sorted(code for code, defect in answer_key.items() if defect is None)
        for code, defect in answer_key.items():
            outcome = outcomes[code]
            if defect is None:
                assert outcome["outcome"] == "acknowledged" and outcome["ack_status"] == "stored", code
            else:
                assert outcome["outcome"] == "quarantined", code
                assert seed.DEFECTS[defect] in {r["rule"] for r in outcome["reasons"]}, (code, outcome["reasons"])

        # The portal holds each good dossier once, and each stored record's signature verifies.
        stats = sandbox_stats(w.sandbox.url("portal"))
        assert stats["dossiers"] == stats["versions"] == len(good) == counts["acknowledged"]
        sink = PortalSink.from_connection("lienthong_portal")
        trust = load_trust_store(w.settings.keys_dir)
        agency = load_signer(w.settings.keys_dir).certificate
        found = sink.lookup(good)
        assert [f["MaHoSo"] for f in found] == good
        for stored in found:
            payload, certificate = unseal(stored["record"], trust)
            assert payload["MaHoSo"] == stored["MaHoSo"] and certificate == agency
        quarantined = [c for c in answer_key if answer_key[c]]
        assert all(not f.get("record") for f in sink.lookup(quarantined[:20]))

        # A rerun pulls nothing and sends nothing.
        again = run_routes(w.settings, [ROUTE])[0]
        assert again["status"] == "success" and again["counts"]["pulled"] == 0
        assert sandbox_stats(w.sandbox.url("portal"))["received"] == stats["received"]

        # After an edit to five dossiers and five new ones, only those ten move.
        touched = good[:5]
        with pyodbc.connect(w.conn_str, autocommit=False) as conn:
            dossier_db.touch(conn, touched, dt.datetime.now().replace(microsecond=0))
        services.seed_dossiers(w.settings, w.conn_str, 5, updated_at=dt.datetime.now().replace(microsecond=0))
        third = run_routes(w.settings, [ROUTE])[0]
        assert third["status"] == "success"
        assert third["counts"]["pulled"] == 10
        moved = {o["record_key"] for o in ledger.outcomes(third["run_id"])}
        assert set(touched) <= moved and len(moved) == 10
        after = sandbox_stats(w.sandbox.url("portal"))
        assert after["versions"] == stats["versions"] + third["counts"]["acknowledged"]
        assert after["received"] == stats["received"] + third["counts"]["pushed"]

        # The three runs are sealed, time-stamped by the sandbox TSA and chained: nothing to report.
        audit = verify_runs(ledger, keys_dir=w.settings.keys_dir)
        assert (audit.problems, audit.runs_checked) == ([], 3)

        assert leaks(w.settings.home, secrets_of(w.settings, w.conn_str)) == []


def test_a_portal_outage_leaves_records_pending_and_the_next_run_delivers_them(tmp_path: Path) -> None:
    with world(tmp_path / "home", 120) as w:
        portal = w.sandbox.url("portal")
        requests.put(f"{portal}/_sandbox/faults", json={"error_rate": 1.0}, timeout=5).raise_for_status()
        failed = run_routes(w.settings, [ROUTE])[0]
        assert failed["status"] == "failed" and failed["dag_run_state"] == "failed"
        counts = failed["counts"]
        assert counts["pulled"] == 120 == counts["quarantined"] + counts["pending"]
        assert counts["pending"] > 0 and counts["acknowledged"] == 0

        requests.put(f"{portal}/_sandbox/faults", json={"error_rate": 0.0}, timeout=5).raise_for_status()
        recovered = run_routes(w.settings, [ROUTE])[0]
        assert recovered["status"] == "success"
        # The cursor stopped before the first pending record: every pending one is pulled again.
        assert recovered["counts"]["acknowledged"] == counts["pending"]
        assert recovered["counts"]["pulled"] <= 120
        assert not any(w.settings.staging_dir.iterdir())  # the failed run's staged personal data is gone too
        stats = sandbox_stats(portal)
        assert stats["dossiers"] == stats["versions"] == counts["pending"]


def test_status_changes_travel_once_each_to_the_portal_progress_service(tmp_path: Path) -> None:
    with world(tmp_path / "home", 200) as w:  # 200 seeded hold one dossier of unknown status
        dossiers, status = run_routes(w.settings, [ROUTE, "stp_h40__status"])
        assert dossiers["status"] == "success"
        assert (status["status"], status["dag_run_state"]) == ("success", "success")
        with pyodbc.connect(w.conn_str) as conn:
            statuses = [row[0] for row in conn.cursor().execute("SELECT status FROM dossier_history").fetchall()]
        counts = status["counts"]
        unknown = statuses.count("TRANG_THAI_KHONG_RO")
        assert counts["pulled"] == len(statuses) == counts["acknowledged"] + counts["quarantined"]
        assert counts["pending"] == 0 and counts["quarantined"] == unknown > 0
        for outcome in Ledger(w.settings.state_db_url).outcomes(status["run_id"]):
            if outcome["outcome"] == "quarantined":
                assert "unknown_status_code" in {r["rule"] for r in outcome["reasons"]}, outcome["reasons"]
        stats = sandbox_stats(w.sandbox.url("portal"))
        assert stats["progress"] == counts["acknowledged"]

        again = run_routes(w.settings, ["stp_h40__status"])[0]
        assert again["status"] == "success" and again["counts"]["pulled"] == 0
        assert sandbox_stats(w.sandbox.url("portal"))["progress"] == stats["progress"]
