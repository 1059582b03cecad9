"""A route run through its real stages (sandbox over ODBC and HTTP) settles sealed and verifiable."""

from __future__ import annotations

import pytest

from lienthong.audit import ledger as ledger_module
from lienthong.audit import manifest, report
from lienthong.signing import merkle
from lienthong.audit import verify as v
from lienthong.audit.ledger import ACKNOWLEDGED, Ledger, outcome_leaf
from lienthong.routes import stages
from lienthong.routes.route import get_route
from lienthong.settings import Settings
from tests.test_stage_resume import ROUTE, sandbox  # noqa: F401  (the fixture)


def test_a_settled_run_carries_its_route_facts_and_verifies(home: Settings, sandbox,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "INSERT_CHUNK", 500)  # stored a chunk at a time, the last one short
    portal_app, _ = sandbox
    portal_app.healed = True
    run_id = stages.run_id_for(ROUTE, "manual__audit")
    for stage in (stages.extract, stages.verify, stages.map_records, stages.gate_records, stages.sign, stages.push):
        stage(ROUTE, run_id)
    outcomes = stages._RunOutcomes(get_route(ROUTE), stages._staging(run_id))
    expected = [o for _, part in outcomes.parts() for o in part]  # before a success purges it
    stages.record(ROUTE, run_id)

    ledger = Ledger(home.state_db_url)
    detail = report.run_detail(ledger, run_id)
    m = detail["manifest"]
    assert m["connector"] == {"id": "so-tu-phap-nghe-an", "version": 1}
    assert m["mapping"]["hash"] and m["schema"]["def"] == "HoSo" and len(m["suite"]["hash"]) == 64
    assert m["tree"]["size"] == m["counts"]["pulled"] == 1200 and m["prev_manifest_hash"] is None
    acked = [o for o in detail["outcomes"] if o["outcome"] == ACKNOWLEDGED]
    assert acked and all(o["payload_hash"] and o["signer"] for o in acked)
    kinds = {p.kind for p in report.verify(ledger, run_id, keys_dir=home.keys_dir).problems}
    assert kinds <= {v.UNSTAMPED}
    [step] = report.trace(ledger, acked[0]["record_key"])
    assert step["proof_ok"] and step["ack_status"] == "stored"

    # What the streaming settle stored is what settling the outcomes as one list gives.
    stored = ledger.outcomes(run_id)
    leaves = [outcome_leaf(o) for o in expected]
    assert [o["record_key"] for o in stored] == [o["record_key"] for o in expected]
    assert [o["leaf_index"] for o in stored] == list(range(len(expected)))
    assert [o["leaf_hash"] for o in stored] == [leaf.hex() for leaf in leaves]
    assert [merkle.leaf_hash(manifest.leaf_bytes(o)) for o in stored] == leaves
    root = merkle.Tree(leaves).root
    assert m["tree"]["root"] == root.hex()
    assert all(merkle.verify_inclusion(leaf, i, len(leaves), [bytes.fromhex(p) for p in o["proof"]], root)
               for i, (leaf, o) in enumerate(zip(leaves, stored)))
