"""The worker is killed (SIGKILL) at every stage boundary and in the middle of a push; the runs
after it account for every dossier, and the portal holds each good one exactly once.

Each DAG run is Airflow's own (``dag.test()`` in a child process); the test watches the run's
staging and the portal, kills the child's whole process tree at the chosen moment, then starts
the next run, which first settles the abandoned one from its staging (``settle_abandoned``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import psutil
import pytest
import requests

from lienthong import airflow_env
from lienthong.demo import run_routes
from lienthong.sandbox.portal import sandbox_stats
from lienthong.staging import STAGES, RunStaging, latest_run
from tests.e2e import World, account_for_every_dossier, world

pytestmark = pytest.mark.slow
ROUTE = "stp_h40__dossiers"
DOSSIERS = 1500


def _run_and_kill(w: World, moment: Callable[[RunStaging], bool]) -> str:
    """Start one DAG run and SIGKILL its process tree as soon as ``moment`` holds; the run's id."""
    env = airflow_env.environment(w.settings)
    log_file = w.settings.logs_dir / "crash.log"
    airflow_env.ensure_metadata_db(w.settings, env, log_file)
    started = time.time()
    child = airflow_env.start_dag_runs([ROUTE], env, w.settings.home / ".crash-result.jsonl", log_file)
    try:
        while True:
            staging = latest_run(w.settings.staging_dir, ROUTE, started)
            if staging is not None and moment(staging):
                break
            assert child.poll() is None, f"the run ended before the kill point; see {log_file}"
            time.sleep(0.02)
        tree = psutil.Process(child.pid)
        for process in [*tree.children(recursive=True), tree]:
            process.kill()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    return staging.run_id


def _after(stage: str) -> Callable[[RunStaging], bool]:
    return lambda staging: staging.stage(stage).done


def test_killed_workers_lose_nothing_and_double_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIENTHONG_ABANDONED_AFTER_S", "0")  # the killed run is known dead at once
    with world(tmp_path / "home", DOSSIERS) as w:
        portal = w.sandbox.url("portal")
        killed = [_run_and_kill(w, _after(stage)) for stage in STAGES[:-1]]

        # In the middle of a push: slow the portal so that the push spans many requests, and kill
        # once it has stored some batches (the reply of the one in flight is lost with the worker).
        requests.put(f"{portal}/_sandbox/faults", json={"latency_ms": 300}, timeout=5).raise_for_status()
        killed.append(_run_and_kill(w, lambda _: sandbox_stats(portal)["versions"] > 0))
        requests.put(f"{portal}/_sandbox/faults", json={"latency_ms": 0}, timeout=5).raise_for_status()
        mid_push = sandbox_stats(portal)
        assert 0 < mid_push["versions"] < DOSSIERS

        killed.append(_run_and_kill(w, _after("push")))  # between push and account
        killed.append(_run_and_kill(w, lambda staging: staging.outcomes().done))  # between account and record
        final = run_routes(w.settings, [ROUTE])[0]
        assert final["status"] == "success" and final["counts"]["pending"] == 0

        account_for_every_dossier(w, ROUTE, [*killed, final["run_id"]])
