"""The dossier and status routes run distributed, by configuration alone: PostgreSQL for Airflow's
metadata and the ledger, Redis as the Celery broker, an API server, a scheduler, a DAG processor
and two Celery workers on this machine sharing one data folder, each run in two partitions. The
ledger must come out as the embedded run's (one partition) does, and both workers must have taken
partitions.

Both workers take partitions by construction, not by chance: each runs one task at a time and
takes none in advance (Airflow's Celery defaults: prefetch multiplier 1, late acknowledgement),
and a stage's two partitions are queued together, so they are handed out one to each worker.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import pyodbc
import pytest
import requests
from sqlalchemy import Engine, create_engine, text

from lienthong import distributed
from lienthong.audit.ledger import PENDING, Ledger
from lienthong.audit.verify import verify_runs
from lienthong.demo import run_routes
from lienthong.sandbox import dossier_db
from lienthong.sandbox.http import free_port
from lienthong.settings import Settings
from tests.e2e import world

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REDIS_SERVER = Path("/usr/bin/redis-server")
ROUTES = ("stp_h40__dossiers", "stp_h40__status")
SEED = 3000
WORKERS = ("worker-a", "worker-b")
POSTGRES = "postgresql+psycopg://lienthong:lienthong@127.0.0.1:5432"  # scripts/ensure-postgres.sh lets it CREATEDB
# The test triggers its runs: the routes' own schedules would add runs of their own.
TEST_SETTINGS = {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
TIMEOUT_S = 240


class Processes:
    """Long-running processes, each in its own process group with its log in ``logs``; stopping
    ends each whole group, so that no worker child or task runner outlives the test."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.started[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True)
        return self.started[name]

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def tails(self, lines: int = 40) -> str:
        return "\n".join(f"----- {name} (exit {p.poll()}) -----\n" + "\n".join(self.log(name).splitlines()[-lines:])
                         for name, p in self.started.items())

    def wait_for(self, what: str, ready: Callable[[], Any], timeout: float = 180) -> Any:
        """Polls ``ready`` until it answers something true; fails with every log's tail when a
        process died or time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [name for name, p in self.started.items() if p.poll() is not None]
            if dead:
                pytest.fail(f"{', '.join(dead)} exited while waiting for {what}\n{self.tails()}")
            found = ready()
            if found:
                return found
            time.sleep(0.2)
        pytest.fail(f"no {what} after {timeout:.0f} s\n{self.tails()}")

    def stop(self) -> None:
        for p in self.started.values():
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.started.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)  # the group's stragglers too
            p.wait()


def _signal_group(p: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    running = Processes(tmp_path / "process-logs")
    try:
        yield running
    finally:
        running.stop()


def airflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "airflow", *args]


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Airflow's metadata and the state database: new, of a name no other run of this test uses,
    so that two suites on one machine never share them, and dropped afterwards (connections left
    over from a stopped process too)."""
    names = [f"lienthong_scaleout_{kind}_{uuid.uuid4().hex[:12]}" for kind in ("airflow", "state")]
    admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{POSTGRES}/{names[0]}", f"{POSTGRES}/{names[1]}"
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def metadata(databases: tuple[str, str]) -> Iterator[Engine]:
    """Airflow's metadata database, to be read by the test."""
    engine = create_engine(databases[0])
    try:
        yield engine
    finally:
        engine.dispose()


def outcomes_by_record(s: Settings, route: str) -> dict[tuple[str, str], tuple[str, str | None, tuple[str, ...]]]:
    """What the ledger says of each record of the route's one run, by (record key, source row):
    outcome, version (PhienBan) and quarantine rules. A record settled twice fails here."""
    ledger = Ledger(s.state_db_url)
    (run,) = ledger.runs(route)
    found = [((o["record_key"], o["source_id"]),
              (o["outcome"], o["version"], tuple(sorted(r["rule"] for r in o["reasons"] or []))))
             for o in ledger.outcomes(run["run_id"])]
    by_record = dict(found)
    assert len(by_record) == len(found), f"{route}: a record settled more than once"
    return by_record


def tasks_by_worker(engine: Engine) -> dict[str, list[str]]:
    """Where each task instance ran: worker name -> ``dag_id.task_id[map_index]``."""
    found: dict[str, list[str]] = defaultdict(list)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT hostname, dag_id, task_id, map_index FROM task_instance "
                                 "WHERE hostname IS NOT NULL AND hostname != '' ORDER BY start_date"))
        for hostname, dag_id, task_id, map_index in rows:
            found[hostname].append(f"{dag_id}.{task_id}" + (f"[{map_index}]" if map_index >= 0 else ""))
    return dict(found)


def run_states(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT dag_id, state FROM dag_run")).all())


def test_two_celery_workers_settle_the_ledger_as_the_embedded_run_does(
        tmp_path: Path, databases: tuple[str, str], processes: Processes, metadata: Engine) -> None:
    if not REDIS_SERVER.exists():
        pytest.skip(f"{REDIS_SERVER} is missing: make setup installs Debian's redis-server")
    metadata_db, state_db = databases
    broker_port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    deployment = distributed.Deployment(metadata_db=metadata_db, state_db=state_db,
                                        broker_url=f"redis://127.0.0.1:{broker_port}/0", api_url=api,
                                        jwt_secret=secrets.token_urlsafe(32), partitions=len(WORKERS))
    processes.start("redis", [str(REDIS_SERVER), "--port", str(broker_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], os.environ.copy())
    migrate = processes.start("db-migrate", airflow("db", "migrate"), distributed.environment(
        Settings(home=tmp_path / "distributed", state_db_url=state_db), deployment))
    with world(tmp_path / "distributed", SEED, ("so-tu-phap.yaml",), state_db=state_db) as w:
        assert migrate.wait(timeout=120) == 0, processes.tails()
        del processes.started["db-migrate"]
        env = {**distributed.environment(w.settings, deployment), **TEST_SETTINGS}
        processes.start("api-server", airflow("api-server", "--host", "127.0.0.1", "--port", str(api_port),
                                              "--workers", "1"), env)
        processes.start("scheduler", airflow("scheduler"), env)
        processes.start("dag-processor", airflow("dag-processor"), env)
        for name in WORKERS:
            processes.start(name, airflow("celery", "worker", "--celery-hostname", name, "--concurrency", "1",
                                          "--skip-serve-logs", "--without-mingle", "--without-gossip"),
                            {**env, distributed.WORKER_NAME_VARIABLE: name})

        # The embedded run of the same seed, in a home of its own, while the deployment runs.
        with world(tmp_path / "embedded", SEED, ("so-tu-phap.yaml",)) as embedded:
            trigger_together(processes, api, w.settings, metadata)
            runs = run_routes(embedded.settings, list(ROUTES))
            assert [run["status"] for run in runs] == ["success"] * len(ROUTES)
            expected = {route: outcomes_by_record(embedded.settings, route) for route in ROUTES}

        states = processes.wait_for(
            "finished DAG runs",
            lambda: (s := run_states(metadata)) and all(s.get(r) in ("success", "failed") for r in ROUTES) and s,
            timeout=TIMEOUT_S)
        assert states == {route: "success" for route in ROUTES}, \
            f"{processes.tails()}\ntask logs: {w.settings.logs_dir / 'airflow'}"

        by_worker = tasks_by_worker(metadata)
        assert set(by_worker) == set(WORKERS), by_worker
        for route in ROUTES:  # each run's partitions: both workers took some
            took = {worker for worker, tasks in by_worker.items()
                    if any(t.startswith(f"{route}.partition.") and t.endswith("]") for t in tasks)}
            assert took == set(WORKERS), (route, by_worker)

        got = {route: outcomes_by_record(w.settings, route) for route in ROUTES}
        with pyodbc.connect(w.conn_str) as conn:
            seeded = set(dossier_db.truth(conn))
        dossiers = got[ROUTES[0]]
        assert sorted(code for code, _ in dossiers) == sorted(seeded) and len(seeded) == SEED
        assert not [key for key, (outcome, _, _) in dossiers.items() if outcome == PENDING]
        for route in ROUTES:
            assert got[route] == expected[route], route
        audit = verify_runs(Ledger(state_db), keys_dir=w.settings.keys_dir)
        assert (audit.problems, audit.runs_checked) == ([], len(ROUTES))


def trigger_together(processes: Processes, api: str, s: Settings, metadata: Engine) -> None:
    """One run of each route, once the DAGs are parsed and both workers listen: triggered while
    paused, unpaused together, so that both runs start in one scheduler loop."""
    headers = {"Authorization": f"Bearer {processes.wait_for('API token', lambda: _token(api, s))}"}
    processes.wait_for("parsed DAGs", lambda: _parsed(metadata) >= set(ROUTES))
    for name in WORKERS:
        processes.wait_for(f"{name} ready", lambda: f"{name} ready." in processes.log(name))
    for route in ROUTES:
        requests.post(f"{api}/api/v2/dags/{route}/dagRuns", json={"logical_date": None}, headers=headers,
                      timeout=10).raise_for_status()
    for route in ROUTES:
        requests.patch(f"{api}/api/v2/dags/{route}", json={"is_paused": False}, headers=headers,
                       timeout=10).raise_for_status()


def _token(api: str, s: Settings) -> str | None:
    """A token for the API server's generated admin (Airflow's simple auth manager)."""
    passwords = s.airflow_home / "simple_auth_manager_passwords.json.generated"
    if not passwords.exists():
        return None
    try:
        [(user, password)] = json.loads(passwords.read_text()).items()
        answer = requests.post(f"{api}/auth/token", json={"username": user, "password": password}, timeout=5)
    except (ValueError, requests.ConnectionError):  # the file half-written, the server not listening yet
        return None
    return answer.json()["access_token"] if answer.status_code in (200, 201) else None


def _parsed(metadata: Engine) -> set[str]:
    with metadata.connect() as conn:
        return {dag_id for (dag_id,) in conn.execute(text("SELECT dag_id FROM serialized_dag"))}
