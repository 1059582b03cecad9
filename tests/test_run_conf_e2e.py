"""A DAG run that asks for its own partition count in its conf (``lienthong run --partitions``),
through Airflow (``dag.test()`` with the run's conf, as a trigger or a backfill gives it), with
the workers' setting left at one: its stages are mapped over that many partitions, each pulling
its own range of the source, and every record settles. A bad count pulls nothing: Airflow makes
no run of a conf its schema refuses, and extract refuses the rest."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lienthong.audit.ledger import Ledger
from lienthong.cli import app
from lienthong.demo import run_routes
from lienthong.sandbox.portal import sandbox_stats
from lienthong.settings import Settings
from tests.e2e import account_for_every_dossier, world

pytestmark = pytest.mark.slow
ROUTE = "stp_h40__dossiers"
DOSSIERS = 1200  # cut into three ranges (500, 500 and 200 rows), one pulled by each partition


def mapped_tasks(s: Settings, airflow_run_id: str) -> dict[str, set[tuple[int, str]]]:
    """The run's task instances inside the partition group, from Airflow's own metadata:
    task id -> (map index, state) of each."""
    found: dict[str, set[tuple[int, str]]] = defaultdict(set)
    with sqlite3.connect(s.airflow_home / "airflow.db") as conn:
        for task_id, map_index, state in conn.execute(
                "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ? "
                "AND task_id LIKE 'partition.%'", (ROUTE, airflow_run_id)):
            found[task_id].add((map_index, state))
    return dict(found)


def test_a_run_asked_for_three_partitions_maps_its_stages_over_three_and_settles_every_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIENTHONG_PARTITIONS", "1")  # the workers' setting: the conf alone asks for three
    with world(tmp_path / "home", DOSSIERS) as w:
        # Airflow refuses to make a run whose conf breaks the DAG param's schema ...
        with pytest.raises(RuntimeError, match="Invalid input for param partitions: 0 is less than the minimum of 1"):
            run_routes(w.settings, [ROUTE], conf={"partitions": 0})
        # ... and the extract task refuses what the schema lets through, before it pulls anything.
        with pytest.raises(RuntimeError, match="left no run record") as refused:
            run_routes(w.settings, [ROUTE], conf={"partitions": 3.0})
        log_file = Path(str(refused.value).rsplit("see ", 1)[1])
        assert "DAG run conf 'partitions' is 3.0: it must be a whole number" in log_file.read_text()
        assert Ledger(w.settings.state_db_url).runs(ROUTE) == []  # no run started in the ledger
        assert sandbox_stats(w.sandbox.url("portal"))["received"] == 0

        # The documented command, which gives the run its conf as a trigger or a backfill does.
        said = CliRunner().invoke(app, ["run", ROUTE, "--partitions", "3"])
        assert said.exit_code == 0, said.output
        run = json.loads(said.stdout.splitlines()[-1])
        assert (run["status"], run["dag_run_state"]) == ("success", "success")
        assert run["counts"]["pulled"] == DOSSIERS and run["counts"]["pending"] == 0
        stages = mapped_tasks(w.settings, run["airflow_run_id"])
        assert stages == {f"partition.{name}": {(k, "success") for k in range(3)}
                          for name in ("pull", "verify", "map", "gate", "sign", "push", "account")}, stages
        # Extract cut the run and each partition's pull task read its own range (a pull logs as
        # the extract stage's partition), not one task the whole run.
        log = max(w.settings.logs_dir.glob("run-*.log")).read_text()
        assert f"run {run['run_id']}: cut into 3 ranges, each pulled by its partition" in log
        pulled = re.findall(rf"run {re.escape(run['run_id'])}: extract, partition (\d) of 3: {{'records': (\d+)}}", log)
        assert dict(pulled) == {"1": "500", "2": "500", "3": "200"}, pulled
        account_for_every_dossier(w, ROUTE, [run["run_id"]])
