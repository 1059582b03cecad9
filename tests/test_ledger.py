"""The run ledger on the SQLite default and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import gc
from typing import Iterator

import pytest
from sqlalchemy import inspect, select, text

from lienthong.audit import ledger as ledger_module
from lienthong.audit import manifest
from lienthong.signing import merkle
from lienthong.audit.ledger import (ACKNOWLEDGED, FAILED, PENDING, QUARANTINED, SUCCESS, Ledger, LedgerError,
                                    outcome_leaf)
from lienthong.connectors.streams import Cursor


def _outcome(key: str, outcome: str, version: str | None = None) -> dict:
    return {"record_key": key, "source_id": key[-1], "source_hash": "0" * 64, "version": version,
            "outcome": outcome,
            "reasons": [{"field": "X", "rule": "r", "message": "X: bad"}] if outcome == QUARANTINED else None,
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


def test_a_run_settled_late_does_not_move_the_cursor_back(state_db_url: str) -> None:
    """An abandoned run settled (from its staging) after a later run read its window again."""
    ledger = Ledger(state_db_url)
    start = Cursor.of(dt.datetime(2025, 1, 1), 10)
    ledger.start_run("run-1", "r", "r", "manual__1", None)
    ledger.settle("run-1", [_outcome("A-1", ACKNOWLEDGED, "v1")], SUCCESS, start, {"pulled": 1}, {})
    ledger.start_run("abandoned", "r", "r", "manual__2", start)  # its worker dies here
    ledger.start_run("run-3", "r", "r", "manual__3", start)  # reads the abandoned run's window and more
    further = Cursor.of(dt.datetime(2025, 3, 1), 30)
    ledger.settle("run-3", [_outcome("A-2", ACKNOWLEDGED, "v1"), _outcome("A-3", ACKNOWLEDGED, "v1")], SUCCESS,
                  further, {"pulled": 2}, {})
    ledger.settle("abandoned", [_outcome("A-2", ACKNOWLEDGED, "v1")], SUCCESS, Cursor.of(dt.datetime(2025, 2, 1), 20),
                  {"pulled": 1}, {})
    assert ledger.cursor("r") == further


def test_acknowledged_versions_are_what_must_never_be_sent_again(state_db_url: str) -> None:
    ledger = Ledger(state_db_url)
    ledger.start_run("run-1", "r", None, None, None)
    outcomes = [_outcome(f"K-{i}", ACKNOWLEDGED, f"v{i}") for i in range(700)] + [_outcome("Q-1", QUARANTINED)]
    ledger.settle("run-1", outcomes, SUCCESS, None, {}, {})
    keys = [f"K-{i}" for i in range(0, 700, 3)] + ["Q-1", "NEW"]
    assert ledger.acknowledged_versions("r", keys) == {(f"K-{i}", f"v{i}") for i in range(0, 700, 3)}
    assert ledger.acknowledged_versions("another-route", keys) == set()


def test_asking_for_acknowledged_versions_leaves_no_cyclic_garbage(state_db_url: str) -> None:
    """Push asks once a part: garbage in cycles would keep each part's keys until a full
    collection, which a long push rarely sees (at a million records, push raised the hub's peak
    by 102 MB with such garbage, by 31 MB without)."""
    ledger = Ledger(state_db_url)
    keys = [f"K-{i}" for i in range(700)]
    ledger.acknowledged_versions("r", keys)  # connections pooled, statement compiled
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            ledger.acknowledged_versions("r", list(keys))
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_settling_again_replaces_the_outcomes_instead_of_doubling_them(state_db_url: str) -> None:
    ledger = Ledger(state_db_url)
    ledger.start_run("run-1", "r", None, None, None)
    ledger.settle("run-1", [_outcome("A-1", PENDING)], FAILED, None, {}, {})
    ledger.settle("run-1", [_outcome("A-1", ACKNOWLEDGED, "v")], SUCCESS, None, {}, {})
    assert [o["outcome"] for o in ledger.outcomes("run-1")] == [ACKNOWLEDGED]


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH by its recursive definition: a reference independent of merkle.Tree."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << (len(leaves) - 1).bit_length() - 1
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PATH by its recursive definition, nearest sibling first."""
    if len(leaves) == 1:
        return []
    k = 1 << (len(leaves) - 1).bit_length() - 1
    if index < k:
        return _path(index, leaves[:k]) + [_mth(leaves[k:])]
    return _path(index - k, leaves[k:]) + [_mth(leaves[:k])]


def _mixed_outcomes(n: int) -> list[dict]:
    kinds = (ACKNOWLEDGED, QUARANTINED, PENDING)
    records = [_outcome(f"A-{i}", kinds[i % 3], f"v{i}" if i % 3 == 0 else None) for i in range(n)]
    for record in records[::3]:  # deterministic, and in local time: stored and hashed in UTC
        record["acked_at"] = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    for record in records[1:2]:  # a message quoting a citizen id, masked before it is hashed
        record["reasons"] = [{"field": "cccd", "rule": "r", "message": "cccd 001203004005 is not known"}]
    return records


@pytest.mark.parametrize("size", [1, 2, 7, 13])
def test_settled_outcomes_leaves_proofs_and_root_match_an_independent_computation(
        state_db_url: str, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "INSERT_CHUNK", 3)  # several chunks, the last one short
    ledger = Ledger(state_db_url)
    ledger.start_run("run-1", "r", None, None, None)
    records = _mixed_outcomes(size)
    ledger.settle("run-1", records, FAILED, None, {"pulled": size}, {})

    stored = ledger.outcomes("run-1")
    assert [r["record_key"] for r in stored] == [r["record_key"] for r in records]
    assert [r["leaf_index"] for r in stored] == list(range(size))
    assert "001203004005" not in str([r["reasons"] for r in stored])
    leaves = [merkle.leaf_hash(manifest.leaf_bytes(row)) for row in stored]
    assert [r["leaf_hash"] for r in stored] == [leaf.hex() for leaf in leaves]
    root = _mth(leaves)
    assert ledger.manifest("run-1")["merkle_root"] == root.hex()
    assert ledger.manifest("run-1")["tree_size"] == size
    for i, row in enumerate(stored):
        assert row["proof"] == [p.hex() for p in _path(i, leaves)]
        assert merkle.verify_inclusion(leaves[i], i, size, [bytes.fromhex(p) for p in row["proof"]], root)


def test_a_time_hashed_into_a_leaf_has_one_text_whatever_form_it_came_in() -> None:
    """Settled leaves commit to this text: a change of form would fail every ledger's verify."""
    hanoi = dt.timezone(dt.timedelta(hours=7))
    text = "2026-11-30T18:02:03.000456Z"
    assert manifest.utc_text(dt.datetime(2026, 12, 1, 1, 2, 3, 456, tzinfo=hanoi)) == text
    assert manifest.utc_text(dt.datetime(2026, 11, 30, 18, 2, 3, 456)) == text  # SQLite's: no zone, UTC
    assert manifest.utc_text("2026-12-01T01:02:03.000456+07:00") == text
    on_the_second = dt.datetime(2026, 11, 30, 18, 2, 3, tzinfo=dt.timezone.utc)
    assert manifest.utc_text(on_the_second) == "2026-11-30T18:02:03.000000Z"
    assert manifest.utc_text(None) is None


def test_a_batch_signature_is_stored_once_and_read_back_with_every_record(
        state_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "INSERT_CHUNK", 3)  # a batch spans chunks
    ledger = Ledger(state_db_url)
    batches = ["eyJ.batch-a.sig", "eyJ.batch-b.sig"]
    records = [{**_outcome(f"A-{i}", ACKNOWLEDGED, f"v{i}"), "signature": batches[i >= 5], "signer": "x5t"}
               for i in range(7)] + [_outcome("A-7", QUARANTINED)]
    for run_id in ("run-1", "run-2", "run-2"):  # another run with the same batch, then a retried settle
        ledger.start_run(run_id, "r", None, None, None)
        ledger.settle(run_id, records, SUCCESS, None, {"pulled": len(records)}, {})

    with ledger.engine.connect() as conn:
        stored = conn.execute(select(ledger_module.batch_signatures)).all()
    assert sorted((d, jws) for d, jws in stored) == sorted((ledger_module.signature_digest(b), b) for b in batches)
    for run_id in ("run-1", "run-2"):
        assert [o["signature"] for o in ledger.outcomes(run_id)] == [r["signature"] for r in records]
        assert [o["leaf_hash"] for o in ledger.outcomes(run_id)] == [outcome_leaf(r).hex() for r in records]
    assert list(ledger.each_outcome("run-2", chunk=3)) == ledger.outcomes("run-2")
    assert "signature_digest" not in ledger.outcomes("run-1")[0]


class _Outcomes:
    """A re-iterable like the record stage's: recomputes its outcomes each time it is gone through."""

    def __init__(self, n: int) -> None:
        self.n, self.passes = n, 0

    def __iter__(self) -> Iterator[dict]:
        self.passes += 1  # counted once gone through, not when merely asked for an iterator
        yield from _mixed_outcomes(self.n)


def test_a_re_iterable_settles_as_a_list_does_with_or_without_its_leaves(state_db_url: str) -> None:
    ledger = Ledger(state_db_url)
    for run_id in ("list", "re-iterable", "with-leaves"):
        ledger.start_run(run_id, run_id, None, None, None)  # a route each: three chains of one
    ledger.settle("list", _mixed_outcomes(11), FAILED, None, {}, {})
    twice = _Outcomes(11)
    ledger.settle("re-iterable", twice, FAILED, None, {}, {})
    once = _Outcomes(11)
    with _spooled(_mixed_outcomes(11)) as leaves:
        ledger.settle("with-leaves", once, FAILED, None, {}, {}, leaves=leaves)
    assert (twice.passes, once.passes) == (2, 1)

    def stored(run_id: str) -> list[tuple]:
        return [(r["record_key"], r["leaf_index"], r["leaf_hash"], r["proof"]) for r in ledger.outcomes(run_id)]

    assert stored("list") == stored("re-iterable") == stored("with-leaves")
    assert len({ledger.manifest(run_id)["merkle_root"] for run_id in ("list", "re-iterable", "with-leaves")}) == 1


def _spooled(records: list[dict]) -> merkle.LeafSpool:
    """The leaves a caller that went through ``records`` already hands the settle."""
    spool = merkle.LeafSpool()
    for record in records:
        spool.add(outcome_leaf(record))
    return spool


def test_an_iterator_is_refused_rather_than_found_empty_on_the_second_pass(state_db_url: str) -> None:
    ledger = Ledger(state_db_url)
    ledger.start_run("run-1", "r", None, None, None)
    with pytest.raises(TypeError, match="re-iterable"):
        ledger.settle("run-1", (r for r in _mixed_outcomes(3)), FAILED, None, {}, {})
    assert ledger.run("run-1")["finished_at"] is None


@pytest.mark.parametrize("change", ["another record", "one more", "one fewer"])
def test_records_that_change_between_the_passes_fail_the_settle_and_leave_the_last_one(
        state_db_url: str, change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "INSERT_CHUNK", 2)  # the mismatch comes after a chunk went in
    ledger = Ledger(state_db_url)
    ledger.start_run("run-1", "r", None, None, None)
    ledger.settle("run-1", [_outcome("A-1", PENDING)], FAILED, None, {"pulled": 1}, {})
    before = (ledger.outcomes("run-1"), ledger.manifest("run-1"), ledger.run("run-1"))
    first = _mixed_outcomes(5)
    second = {"another record": first[:4] + [_outcome("B-9", PENDING)], "one more": _mixed_outcomes(6),
              "one fewer": first[:4]}[change]
    with pytest.raises(LedgerError, match="changed between the two passes"), _spooled(first) as leaves:
        ledger.settle("run-1", second, SUCCESS, None, {"pulled": 5}, {}, leaves=leaves)
    assert (ledger.outcomes("run-1"), ledger.manifest("run-1"), ledger.run("run-1")) == before


def test_a_ledger_made_before_the_leaf_order_index_gets_it_when_opened(state_db_url: str) -> None:
    ledger = Ledger(state_db_url)
    with ledger.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_outcomes_run_leaf"))
    Ledger(state_db_url)
    Ledger(state_db_url)  # opened again: already there, no error
    assert "ix_outcomes_run_leaf" in {ix["name"] for ix in inspect(ledger.engine).get_indexes("record_outcomes")}
