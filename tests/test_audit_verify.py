"""``audit verify`` against a real state database tampered with by SQL, one way per test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from lienthong.audit import report
from lienthong.audit import verify as v
from lienthong.audit.ledger import ACKNOWLEDGED, PENDING, Ledger
from lienthong.audit.manifest import Seal, stamp_or_none
from lienthong.connectors import connection
from lienthong.sandbox.http import free_port
from tests.audit_runs import outcome, running_tsa, settle, short_lived_platform_seal, three_runs, wait_until


@pytest.fixture(scope="module", autouse=True)
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with running_tsa(tmp_path_factory.mktemp("tsa-home")):
        yield


@pytest.fixture
def ledger(state_db_url: str, keys: Path) -> Ledger:
    return three_runs(state_db_url, keys)



def problems(ledger: Ledger, keys: Path, run_id: str | None = None) -> set[tuple]:
    return {(p.run_id, p.record_key, p.kind) for p in report.verify(ledger, run_id, keys_dir=keys).problems}


def sql(ledger: Ledger, statement: str, **params: Any) -> None:
    with ledger.engine.begin() as conn:
        assert conn.execute(text(statement), params).rowcount >= 1


def test_an_untouched_ledger_verifies(ledger: Ledger, keys: Path) -> None:
    assert problems(ledger, keys) == set()
    result = report.verify(ledger, keys_dir=keys)
    assert (result.runs_checked, result.records_checked) == (3, 12)
    assert report.run_detail(ledger, "run-1")["manifest"]["prev_manifest_hash"] is None
    assert (report.run_detail(ledger, "run-2")["manifest"]["prev_manifest_hash"]
            == report.run_detail(ledger, "run-1")["manifest_hash"])


def test_reasons_are_masked_before_they_are_hashed(ledger: Ledger, keys: Path) -> None:
    reasons = [o["reasons"] for o in ledger.outcomes("run-1") if o["reasons"]]
    assert reasons and all("001******345" in r[0]["message"] and "001090012345" not in r[0]["message"] for r in reasons)


def test_a_changed_outcome_is_named(ledger: Ledger, keys: Path) -> None:
    sql(ledger, "UPDATE record_outcomes SET outcome = 'acknowledged' WHERE run_id = 'run-1' AND record_key = 'H40-1'")
    found = problems(ledger, keys)
    assert ("run-1", "H40-1", v.RECORD_CHANGED) in found
    assert ("run-1", None, v.COUNTS_MISMATCH) in found  # the manifest counted it quarantined
    assert {p[0] for p in found} == {"run-1"}


def test_a_changed_outcome_with_a_recomputed_leaf_hash_is_still_caught(ledger: Ledger, keys: Path) -> None:
    from lienthong.signing import merkle
    from lienthong.audit.manifest import leaf_bytes

    row = next(o for o in ledger.outcomes("run-2") if o["record_key"] == "H40-5")
    forged = merkle.leaf_hash(leaf_bytes({**row, "ack_status": "duplicate"})).hex()
    sql(ledger, "UPDATE record_outcomes SET ack_status = 'duplicate', leaf_hash = :h "
                "WHERE run_id = 'run-2' AND record_key = 'H40-5'", h=forged)
    assert ("run-2", "H40-5", v.RECORD_CHANGED) in problems(ledger, keys, "run-2")


@pytest.mark.parametrize("tamper", [
    "UPDATE batch_signatures SET jws = 'eyJ.forged' WHERE jws = 'eyJ.batch'",
    "DELETE FROM batch_signatures WHERE jws = 'eyJ.batch'",
])
def test_a_changed_or_removed_batch_signature_names_every_record_that_carries_it(
        ledger: Ledger, keys: Path, tamper: str) -> None:
    settle(ledger, "run-4", keys,
           [{**outcome(f"H40-{i}", ACKNOWLEDGED), "signature": "eyJ.batch"} for i in (11, 12, 13)])
    sql(ledger, tamper)
    assert problems(ledger, keys) == {("run-4", f"H40-{i}", v.RECORD_CHANGED) for i in (11, 12, 13)} | {
        ("run-4", None, v.ROOT_MISMATCH)}


def test_a_ledger_that_kept_each_records_signature_in_its_row_is_moved_and_still_verifies(
        ledger: Ledger, keys: Path) -> None:
    before = {run_id: ledger.outcomes(run_id) for run_id in ("run-1", "run-2", "run-3")}
    with ledger.engine.begin() as conn:  # back to how ledgers were laid out before batch signatures
        conn.execute(text("ALTER TABLE record_outcomes ADD COLUMN signature TEXT"))
        conn.execute(text("UPDATE record_outcomes SET signature = "
                          "(SELECT jws FROM batch_signatures WHERE digest = signature_digest)"))
        conn.execute(text("ALTER TABLE record_outcomes DROP COLUMN signature_digest"))
        conn.execute(text("DELETE FROM batch_signatures"))
    moved = Ledger(ledger.engine.url.render_as_string(hide_password=False))
    assert {run_id: moved.outcomes(run_id) for run_id in before} == before
    assert problems(moved, keys) == set()


def test_a_removed_record_is_named_by_its_place(ledger: Ledger, keys: Path) -> None:
    sql(ledger, "DELETE FROM record_outcomes WHERE run_id = 'run-3' AND record_key = 'H40-8'")
    found = report.verify(ledger, "run-3", keys_dir=keys).problems
    removed = [p for p in found if p.kind == v.RECORD_REMOVED]
    assert len(removed) == 1 and removed[0].run_id == "run-3"
    assert "leaf 1 of 4" in removed[0].message and "H40-7" in removed[0].message and "H40-9" in removed[0].message


def test_a_removed_last_record_is_caught(ledger: Ledger, keys: Path) -> None:
    sql(ledger, "DELETE FROM record_outcomes WHERE run_id = 'run-3' AND record_key = 'H40-10'")
    assert ("run-3", None, v.RECORD_REMOVED) in problems(ledger, keys)


def test_the_quick_check_counts_each_runs_records_but_recomputes_none(ledger: Ledger, keys: Path) -> None:
    def quick() -> set[tuple]:
        return {(p.run_id, p.record_key, p.kind)
                for p in report.verify(ledger, every_record=False, keys_dir=keys).problems}

    sql(ledger, "UPDATE record_outcomes SET outcome = 'acknowledged' WHERE run_id = 'run-1' AND record_key = 'H40-1'")
    assert quick() == set()  # a changed record: only recomputing it finds it
    assert ("run-1", "H40-1", v.RECORD_CHANGED) in problems(ledger, keys, "run-1")
    sql(ledger, "DELETE FROM record_outcomes WHERE run_id = 'run-3' AND record_key = 'H40-8'")
    sql(ledger, "INSERT INTO record_outcomes (run_id, route, record_key, source_id, source_hash, outcome) "
                "SELECT run_id, route, 'H40-X', source_id, source_hash, outcome FROM record_outcomes "
                "WHERE run_id = 'run-2' AND record_key = 'H40-5'")
    assert quick() == {("run-3", None, v.RECORD_REMOVED), ("run-2", None, v.RECORD_ADDED)}
    result = report.verify(ledger, every_record=False, keys_dir=keys)
    assert (result.runs_checked, result.records_checked) == (3, 0)


def test_a_removed_middle_run_breaks_the_chain_and_names_the_run_after_it(ledger: Ledger, keys: Path) -> None:
    sql(ledger, "DELETE FROM run_manifests WHERE run_id = 'run-2'")
    found = problems(ledger, keys)
    assert ("run-3", None, v.RUN_REMOVED) in found
    assert ("run-3", None, v.CHAIN_BROKEN) in found
    assert ("run-2", None, v.UNSEALED) in found  # its run row is still there, now without a seal


def test_a_removed_run_row_with_its_manifest_is_caught(ledger: Ledger, keys: Path) -> None:
    sql(ledger, "DELETE FROM run_manifests WHERE run_id = 'run-1'")
    sql(ledger, "DELETE FROM record_outcomes WHERE run_id = 'run-1'")
    sql(ledger, "DELETE FROM runs WHERE run_id = 'run-1'")
    assert ("run-2", None, v.RUN_REMOVED) in problems(ledger, keys)


def test_swapped_runs_are_caught(ledger: Ledger, keys: Path) -> None:
    sql(ledger, "UPDATE run_manifests SET seq = 99 WHERE run_id = 'run-1'")
    sql(ledger, "UPDATE run_manifests SET seq = 1 WHERE run_id = 'run-2'")
    sql(ledger, "UPDATE run_manifests SET seq = 2 WHERE run_id = 'run-1'")
    found = problems(ledger, keys)
    assert {("run-1", None, v.MANIFEST_MISMATCH), ("run-2", None, v.MANIFEST_MISMATCH),
            ("run-1", None, v.CHAIN_BROKEN), ("run-2", None, v.CHAIN_BROKEN)} <= found


def test_a_corrupted_signature_is_caught(ledger: Ledger, keys: Path) -> None:
    signature = bytearray(ledger.manifest("run-2")["signature"])
    signature[-5] ^= 0xFF
    sql(ledger, "UPDATE run_manifests SET signature = :s WHERE run_id = 'run-2'", s=bytes(signature))
    assert problems(ledger, keys) == {("run-2", None, v.BAD_SIGNATURE)}


def test_a_manifest_rewritten_without_the_key_is_caught(ledger: Ledger, keys: Path) -> None:
    forged = ledger.manifest("run-2")["manifest"].replace('"acknowledged":3', '"acknowledged":2')
    sql(ledger, "UPDATE run_manifests SET manifest = :m WHERE run_id = 'run-2'", m=forged)
    found = problems(ledger, keys)
    assert ("run-2", None, v.BAD_SIGNATURE) in found and ("run-2", None, v.MANIFEST_MISMATCH) in found


def test_a_manifest_signed_by_another_certificate_of_the_ca_is_refused(state_db_url: str, keys: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from lienthong.signing.cms import sign_detached

    agency_key = serialization.load_pem_private_key((keys / "agency.key.pem").read_bytes(), None)
    agency_chain = x509.load_pem_x509_certificates((keys / "agency.pem").read_bytes())
    ledger = Ledger(state_db_url)
    settle(ledger, "run-1", keys, [outcome("H40-1", ACKNOWLEDGED)],
           seal=lambda data: Seal(sig := sign_detached(data, agency_key, agency_chain), stamp_or_none(sig)))
    found = report.verify(ledger, keys_dir=keys).problems
    assert [p.kind for p in found] == [v.BAD_SIGNATURE]
    assert "not by the platform key" in found[0].message


def test_a_stamped_manifest_outlives_the_platform_certificate_that_signed_it(state_db_url: str, keys: Path) -> None:
    """Judged at its time stamp (the time rule in signing/trust.py); unstamped, it is judged now."""
    seal, expires = short_lived_platform_seal(keys)
    ledger = Ledger(state_db_url)
    settle(ledger, "run-1", keys, [outcome("H40-1", ACKNOWLEDGED)], seal=seal)
    wait_until(expires)

    assert problems(ledger, keys) == set()
    sql(ledger, "UPDATE run_manifests SET timestamp = NULL WHERE run_id = 'run-1'")
    assert problems(ledger, keys) == {("run-1", None, v.UNSTAMPED), ("run-1", None, v.BAD_SIGNATURE)}


def test_changed_counts_and_cursor_are_caught(ledger: Ledger, keys: Path) -> None:
    sql(ledger, """UPDATE runs SET counts = '{"pulled": 9}', cursor_after = NULL WHERE run_id = 'run-2'""")
    assert problems(ledger, keys) == {("run-2", None, v.RUN_MISMATCH)}


def test_a_deleted_time_stamp_is_reported(ledger: Ledger, keys: Path) -> None:
    assert all(report.run_detail(ledger, r)["stamped"] for r in ("run-1", "run-2", "run-3"))
    sql(ledger, "UPDATE run_manifests SET timestamp = NULL WHERE run_id = 'run-1'")
    assert problems(ledger, keys) == {("run-1", None, v.UNSTAMPED)}


def test_a_time_stamp_of_another_run_is_refused(ledger: Ledger, keys: Path) -> None:
    sql(ledger, "UPDATE run_manifests SET timestamp = :t WHERE run_id = 'run-1'",
        t=ledger.manifest("run-2")["timestamp"])
    found = report.verify(ledger, "run-1", keys_dir=keys).problems
    assert [(p.run_id, p.kind) for p in found] == [("run-1", v.BAD_TIMESTAMP)]
    assert "imprint" in found[0].message


def test_a_run_settles_unstamped_when_the_tsa_does_not_answer(state_db_url: str, keys: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    dead = {"conn_type": "http", "host": "127.0.0.1", "port": free_port(), "schema": "http",
            "extra": {"max_attempts": 1, "timeout": 2, "ca_file": "/nonexistent"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{connection.TSA.upper()}", json.dumps(dead))
    ledger = Ledger(state_db_url)
    settle(ledger, "run-1", keys, [outcome("H40-1", ACKNOWLEDGED)])
    assert ledger.run("run-1")["finished_at"] is not None
    assert problems(ledger, keys) == {("run-1", None, v.UNSTAMPED)}


def test_settling_a_run_again_keeps_its_place_in_the_chain(ledger: Ledger, keys: Path) -> None:
    before = ledger.manifest("run-3")
    settle(ledger, "run-3", keys, [outcome("H40-7", ACKNOWLEDGED)])
    after = ledger.manifest("run-3")
    assert (after["seq"], after["prev_hash"]) == (before["seq"], before["prev_hash"])
    assert after["tree_size"] == 1
    assert problems(ledger, keys) == set()


def test_a_run_others_chain_after_cannot_be_rewritten(ledger: Ledger, keys: Path) -> None:
    from lienthong.audit.ledger import LedgerError

    with pytest.raises(LedgerError, match="run-2"):
        settle(ledger, "run-2", keys, [])
    assert problems(ledger, keys) == set()


def test_trace_follows_a_dossier_across_runs_with_valid_proofs(ledger: Ledger) -> None:
    steps = report.trace(ledger, "H40-3")
    assert [(s["run_id"], s["outcome"]) for s in steps] == [("run-1", PENDING), ("run-2", ACKNOWLEDGED)]
    assert all(s["proof_ok"] for s in steps)
    assert steps[1]["payload_hash"] == "1" * 64 and steps[1]["ack_status"] == "stored"
    assert report.trace(ledger, "no-such-code") == []
