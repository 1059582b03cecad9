"""A stage that fails part-way resumes from staging: the retried push sends only what is left.

The stages are called directly here (the DAG tests run them through Airflow), each test staging
in a local folder and in an S3 bucket (moto's server over HTTP); the dossier database, the
population database and the portal are the real sandbox over ODBC and HTTP.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterator

import pytest

from lienthong import staging as staging_module
from lienthong.audit import report
from lienthong.audit import verify as audit_verify
from lienthong.connectors import connection
from lienthong.connectors.odbc import OdbcSource
from lienthong.connectors.rest import PortalUnavailable
from lienthong.routes import stages
from lienthong.routes.route import get_route
from lienthong.sandbox import population, portal, services
from lienthong.sandbox.http import ServerThread
from lienthong.settings import Settings
from lienthong.signing.keys import init_keys, load_trust_store
from lienthong.staging import RunStaging
from tests.conftest import sqlite_connection_string
from tests.e2e import approve_examples

ROUTE = "stp_h40__dossiers"


class FailAfter:
    """Lets ``allowed`` DongBoHoSoMC calls through, then answers 503 until ``healed``."""

    def __init__(self, app: Callable, allowed: int) -> None:
        self.app, self.allowed, self.healed = app, allowed, False
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        if environ["PATH_INFO"] == "/api/service" and not self.healed:
            with self._lock:
                self.allowed -= 1
                failing = self.allowed < 0
            if failing:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"down"]
        return self.app(environ, start_response)


@pytest.fixture
def sandbox(staged_home: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FailAfter, str]]:
    init_keys(staged_home.keys_dir)
    users = {"lgsp": "secret-password"}
    portal_app = FailAfter(portal.create_app(staged_home.sandbox_dir / "portal.db",
                                             load_trust_store(staged_home.keys_dir), users), allowed=6)
    staged_home.sandbox_dir.mkdir(parents=True, exist_ok=True)
    with (ServerThread(population.create_app(staged_home.sandbox_dir / "population.db")) as pop,
          ServerThread(portal_app) as web):
        conns = {
            connection.DOSSIER_DB: services.dossier_db_connection(staged_home),
            connection.POPULATION: {"conn_type": "http", "host": "127.0.0.1", "port": pop.port},
            connection.PORTAL: {"conn_type": "http", "host": "127.0.0.1", "port": web.port, "login": "lgsp",
                                "password": "secret-password",
                                "extra": {"batch_size": 100, "max_attempts": 2, "backoff_initial": 0.01,
                                          "backoff_max": 0.02}},
        }
        for conn_id, conn in conns.items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        services.seed_dossiers(staged_home, sqlite_connection_string(staged_home.sandbox_dir / "dossiers.db"), 1200)
        approve_examples(staged_home, "so-tu-phap.yaml")
        yield portal_app, web.url


def test_a_push_that_fails_part_way_resumes_without_sending_anything_twice(
        staged_home: Settings, sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    portal_app, url = sandbox
    run_id = stages.run_id_for(ROUTE, "manual__resume")
    stages.extract(ROUTE, run_id)
    for stage in (stages.verify, stages.map_records, stages.gate_records, stages.sign):
        stage(ROUTE, run_id)
    signed = RunStaging(staged_home.staging_dir, run_id).stage("sign")
    sealed = sum(1 for i in signed.parts() for r in signed.read_part(i) if r)

    with pytest.raises(PortalUnavailable):
        stages.push(ROUTE, run_id)
    # Outcomes are final only once pushed: accounting for the partition now is refused.
    with pytest.raises(RuntimeError, match=f"run {run_id}: partition 1 of 1 is not pushed yet"):
        stages.account(ROUTE, run_id, 0)
    push = RunStaging(staged_home.staging_dir, run_id).stage("push")
    acked_before = sum(1 for i in push.parts() for a in push.read_part(i) if a)
    assert 0 < acked_before < sealed and not push.done
    received_before = portal.sandbox_stats(url)["received"]

    portal_app.healed = True
    counts = stages.push(ROUTE, run_id)
    assert counts["stored"] == sealed and "duplicate" not in counts
    stats = portal.sandbox_stats(url)
    assert stats["received"] - received_before == sealed - acked_before  # only the rest was sent
    assert stats["duplicates"] == 0 and stats["dossiers"] == sealed

    accounted = stages.account(ROUTE, run_id, 0)
    assert accounted == {"records": 1200, "acknowledged": sealed, "quarantined": 1200 - sealed}
    # record settles an accounted partition from the staged outcomes, computing none again.
    monkeypatch.setattr(stages, "_outcome", lambda *args: pytest.fail("record computed an accounted outcome again"))
    settled = stages.record(ROUTE, run_id)
    assert settled["pulled"] == 1200 == settled["acknowledged"] + settled["quarantined"]
    assert not RunStaging(staged_home.staging_dir, run_id).root.exists()  # settled staging, with personal data, is gone


def test_a_run_whose_worker_died_is_settled_by_the_next_run_from_its_staging(
        staged_home: Settings, sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    portal_app, url = sandbox
    portal_app.healed = True
    dead = stages.run_id_for(ROUTE, "manual__dead")
    stages.extract(ROUTE, dead)
    for stage in (stages.verify, stages.map_records, stages.gate_records, stages.sign, stages.push):
        stage(ROUTE, dead)  # ... and the worker dies before `record`
    ledger = stages._ledger()
    assert [r["run_id"] for r in ledger.open_runs(ROUTE)] == [dead]

    stages.settle_abandoned(ROUTE, ledger)  # within the lease: it might be a live worker, slow
    assert ledger.run(dead)["status"] == "running"

    monkeypatch.setenv("LIENTHONG_ABANDONED_AFTER_S", "0")
    after = stages.run_id_for(ROUTE, "manual__after")
    stages.extract(ROUTE, after)
    settled = ledger.run(dead)
    assert settled["status"] == "success" and settled["counts"]["acknowledged"] > 0
    assert settled["counts"]["pulled"] == 1200 and settled["counts"]["pending"] == 0
    # The next run starts past what the dead one delivered.
    assert ledger.run(after)["cursor_before"] == settled["cursor_after"]
    assert portal.sandbox_stats(url)["dossiers"] == settled["counts"]["acknowledged"]


def test_partitions_of_a_run_go_through_the_stages_in_any_order_and_every_record_is_settled(
        staged_home: Settings, sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a distributed run does: each worker takes a partition of each stage, in no set order."""
    portal_app, url = sandbox
    portal_app.healed = True
    monkeypatch.setenv("LIENTHONG_PARTITIONS", "3")
    run_id = stages.run_id_for(ROUTE, "manual__partitions")
    stages.extract(ROUTE, run_id)  # a database source: the run is cut into ranges, nothing pulled yet
    assert stages.partitions(run_id) == 3
    staging = RunStaging(staged_home.staging_dir, run_id)
    extract = staging.stage("extract")
    assert len(staging.ranges()) == 3 and extract.parts() == []
    monkeypatch.setenv("LIENTHONG_PARTITIONS", "2")  # a changed setting does not re-plan a run
    stages.extract(ROUTE, run_id)
    assert stages.partitions(run_id) == 3

    for k in (2, 0, 1):
        assert not extract.done
        stages.pull(ROUTE, run_id, k)
    plan = staging.partitions()
    assert [i for part in plan for i in part] == extract.parts()
    rows = [sum(len(extract.read_part(i)) for i in part) for part in plan]
    assert rows == [500, 500, 200] and extract.counts() == {"records": 1200}
    one_pass = OdbcSource.from_connection(get_route(ROUTE).stream).read(None)
    assert [r["id"] for i in extract.parts() for r in extract.read_part(i)] == \
        [str(row["id"]) for batch in one_pass for _, row in batch]
    for name, stage in (("verify", stages.verify), ("map", stages.map_records), ("gate", stages.gate_records),
                        ("sign", stages.sign), ("push", stages.push)):
        for k in (2, 0, 1):
            assert not staging.stage(name).done
            counts = stage(ROUTE, run_id, k)
            if name in ("verify", "map", "gate"):
                assert counts["records"] == rows[k]
        assert staging.stage(name).done
        assert staging.stage(name).counts()["records"] == sum(staging.stage(name).partition_counts(k)["records"]
                                                              for k in range(3))

    # Two partitions accounted for in the task group; the third's worker died, so record does it.
    accounted = {k: stages.account(ROUTE, run_id, k) for k in (2, 0)}
    assert {k: counts["records"] for k, counts in accounted.items()} == {2: rows[2], 0: rows[0]}
    assert not staging.outcomes().done

    settled = stages.record(ROUTE, run_id)
    assert settled["pulled"] == 1200 == settled["acknowledged"] + settled["quarantined"]
    assert settled["stages"]["gate"]["records"] == 1200
    assert settled["stages"]["push"]["records"] == settled["stages"]["sign"]["records"] == settled["pushed"]
    assert portal.sandbox_stats(url)["dossiers"] == settled["acknowledged"]
    # Outcomes staged by account and by record alike hash into a tree whose proofs verify.
    assert {p.kind for p in report.verify(stages._ledger(), run_id, keys_dir=staged_home.keys_dir).problems} \
        <= {audit_verify.UNSTAMPED}


def test_a_range_with_more_rows_than_its_part_numbers_stops_before_the_next_ranges_parts(
        staged_home: Settings, sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """A range may write RANGE_PARTS parts (here one, so that two ranges of 600 rows overflow): the
    part that would take the next range's number is not written, and the cursor stays put."""
    monkeypatch.setattr(stages, "RANGE_PARTS", 1)
    monkeypatch.setattr(staging_module, "RANGE_PARTS", 1)
    monkeypatch.setenv("LIENTHONG_PARTITIONS", "2")
    run_id = stages.run_id_for(ROUTE, "manual__range_full")
    stages.extract(ROUTE, run_id)
    for k in (0, 1):
        with pytest.raises(stages.RangeFull, match=f"range {k + 1} of 2 holds more than 1 parts of up to 500 "
                                                   "rows; run the backfill in more partitions"):
            stages.pull(ROUTE, run_id, k)
    extract = RunStaging(staged_home.staging_dir, run_id).stage("extract")
    one_pass = [str(row["id"]) for batch in OdbcSource.from_connection(get_route(ROUTE).stream).read(None)
                for _, row in batch]
    assert extract.parts() == [0, 1]  # each range's first part, under its own number
    assert [r["id"] for r in extract.read_part(0)] == one_pass[:500]
    assert [r["id"] for r in extract.read_part(1)] == one_pass[600:1100]
    with pytest.raises(stages.RunIncomplete, match="range 1 of 2 was not pulled to its end"):
        stages.record(ROUTE, run_id)
    assert stages._ledger().run(run_id)["cursor_after"] is None  # the next run pulls everything again


def test_a_range_left_unpulled_holds_the_cursor_at_its_start_and_the_next_run_sends_nothing_twice(
        staged_home: Settings, sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker of the middle partition dies before it pulls: what the others delivered is
    settled, but the cursor may not pass the range nobody read."""
    portal_app, url = sandbox
    portal_app.healed = True
    monkeypatch.setenv("LIENTHONG_PARTITIONS", "3")
    first = stages.run_id_for(ROUTE, "manual__unpulled")
    stages.extract(ROUTE, first)
    staging = RunStaging(staged_home.staging_dir, first)
    ranges = staging.ranges()
    for stage in (stages.pull, stages.verify, stages.map_records, stages.gate_records, stages.sign, stages.push):
        for k in (0, 2):
            stage(ROUTE, first, k)
    with pytest.raises(stages.RunIncomplete, match="range 2 of 3 was not pulled"):
        stages.record(ROUTE, first)
    ledger = stages._ledger()
    settled = ledger.run(first)
    assert settled["status"] == "failed" and settled["counts"]["pulled"] == 700 == (
        settled["counts"]["acknowledged"] + settled["counts"]["quarantined"])
    assert settled["cursor_after"] == ranges[1]["after"]  # the end of the first range, no further
    delivered = portal.sandbox_stats(url)["dossiers"]
    assert delivered == settled["counts"]["acknowledged"]

    monkeypatch.setenv("LIENTHONG_PARTITIONS", "1")
    second = stages.run_id_for(ROUTE, "manual__after_unpulled")
    stages.extract(ROUTE, second)
    for stage in (stages.pull, stages.verify, stages.map_records, stages.gate_records, stages.sign, stages.push):
        stage(ROUTE, second)
    again = stages.record(ROUTE, second)
    # The middle range and the last one again: the last one's acknowledged records are not resent.
    assert again["pulled"] == 700 and again["pending"] == 0
    assert again["already_acknowledged"] == sum(1 for o in ledger.outcomes(first)[500:]
                                                 if o["outcome"] == "acknowledged")
    stats = portal.sandbox_stats(url)
    assert stats["duplicates"] == 0
    assert stats["dossiers"] == delivered + again["acknowledged"] - again["already_acknowledged"]
