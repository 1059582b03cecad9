"""The dossier and status routes run distributed, by configuration alone: PostgreSQL for Airflow's
metadata and the ledger, Redis as the Celery broker, staging in an S3 bucket (moto's server over
HTTP), an API server, a scheduler, a DAG processor and two Celery workers on this machine (sharing
one data folder for the keys and logs, as machines would share a key store and log shipping, but
no staging). Each route is backfilled with ``airflow backfill create`` as a province would, each
run in two partitions asked for in the backfill's conf (the workers' ``LIENTHONG_PARTITIONS`` is
left at one). The run that pulls the records must settle the ledger as the embedded run (one
partition) does, both workers must have taken partitions of it, and the backfill's later runs,
which find nothing new, must succeed too.

Both workers take partitions by construction, not by chance: each runs one task at a time and
takes none in advance (Airflow's Celery defaults: prefetch multiplier 1, late acknowledgement),
and a stage's two partitions are queued together, so they are handed out one to each worker.
"""

from __future__ import annotations

import datetime as dt
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
from lienthong.audit.ledger import PENDING, SUCCESS, Ledger
from lienthong.audit.verify import verify_runs
from lienthong.demo import run_routes
from lienthong.sandbox import dossier_db
from lienthong.sandbox.http import free_port
from lienthong.settings import Settings
from tests.conftest import STAGING_CONN_ID, s3_client
from tests.e2e import world

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.s3]

REDIS_SERVER = Path("/usr/bin/redis-server")
ROUTES = ("stp_h40__dossiers", "stp_h40__status")
SEED = 3000
WORKERS = ("worker-a", "worker-b")
POSTGRES = "postgresql+psycopg://lienthong:lienthong@127.0.0.1:5432"  # scripts/ensure-postgres.sh lets it CREATEDB
# Only the backfill makes runs: the routes' own schedules would add runs of their own once unpaused.
TEST_SETTINGS = {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
# The backfill's window, [quarter hour - 5 min, quarter hour], holds this many runs of each route
# (so-tu-phap.yaml: dossiers every 15 minutes, status every 5).
BACKFILL_RUNS = {"stp_h40__dossiers": 1, "stp_h40__status": 2}
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

    def finish(self, name: str, timeout: float) -> None:
        """Waits for a one-off command started with ``start``; fails with every log's tail unless
        it succeeded, and forgets it, so that ``wait_for`` does not take its exit for a death."""
        try:
            code = self.started[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} still running after {timeout:.0f} s\n{self.tails()}")
        if code != 0:
            pytest.fail(f"{name} exited {code}\n{self.tails()}")
        del self.started[name]

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


Outcomes = dict[tuple[str, str], tuple[str, str | None, tuple[str, ...]]]


def outcomes_by_record(s: Settings, route: str) -> tuple[str | None, Outcomes]:
    """The route's one run that settled records, as its Airflow run id, and what the ledger says
    of each of them by (record key, source row): outcome, version (PhienBan) and quarantine rules.
    Every run of the route must have succeeded; a second run settling records (a window pulled
    twice) or a record settled twice fails here."""
    ledger = Ledger(s.state_db_url)
    runs = ledger.runs(route)
    assert [run["status"] for run in runs] == [SUCCESS] * len(runs), (route, runs)
    settled = [(run["airflow_run_id"], ledger.outcomes(run["run_id"])) for run in runs]
    [(airflow_run_id, outcomes)] = [(run_id, found) for run_id, found in settled if found]
    found = [((o["record_key"], o["source_id"]),
              (o["outcome"], o["version"], tuple(sorted(r["rule"] for r in o["reasons"] or []))))
             for o in outcomes]
    by_record = dict(found)
    assert len(by_record) == len(found), f"{route}: a record settled more than once"
    return airflow_run_id, by_record


def tasks_by_worker(engine: Engine) -> dict[str, list[tuple[str, str]]]:
    """Where each task instance ran: worker name -> (run id, ``dag_id.task_id[map_index]``)."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT hostname, run_id, dag_id, task_id, map_index FROM task_instance "
                                 "WHERE hostname IS NOT NULL AND hostname != '' ORDER BY start_date"))
        for hostname, run_id, dag_id, task_id, map_index in rows:
            found[hostname].append((run_id, f"{dag_id}.{task_id}" + (f"[{map_index}]" if map_index >= 0 else "")))
    return dict(found)


def dag_runs(engine: Engine) -> dict[str, list[tuple[str, str]]]:
    """Each DAG's runs, oldest first: (run type, state)."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with engine.connect() as conn:
        for dag_id, run_type, state in conn.execute(
                text("SELECT dag_id, run_type, state FROM dag_run ORDER BY logical_date")):
            found[dag_id].append((run_type, state))
    return dict(found)


def test_two_celery_workers_backfill_the_ledger_as_the_embedded_run_settles_it(
        tmp_path: Path, databases: tuple[str, str], processes: Processes, metadata: Engine,
        s3_bucket: str, s3_endpoint: str) -> None:
    if not REDIS_SERVER.exists():
        pytest.skip(f"{REDIS_SERVER} is missing: make setup installs Debian's redis-server")
    metadata_db, state_db = databases
    broker_port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    deployment = distributed.Deployment(metadata_db=metadata_db, state_db=state_db,
                                        broker_url=f"redis://127.0.0.1:{broker_port}/0", api_url=api,
                                        jwt_secret=secrets.token_urlsafe(32), staging_url=s3_bucket,
                                        staging_conn_id=STAGING_CONN_ID)
    processes.start("redis", [str(REDIS_SERVER), "--port", str(broker_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], os.environ.copy())
    processes.start("db-migrate", airflow("db", "migrate"), distributed.environment(
        Settings(home=tmp_path / "distributed", state_db_url=state_db), deployment))
    with world(tmp_path / "distributed", SEED, ("so-tu-phap.yaml",), state_db=state_db) as w:
        processes.finish("db-migrate", timeout=120)
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
            backfill_together(processes, api, w.settings, metadata, env)
            runs = run_routes(embedded.settings, list(ROUTES))
            assert [run["status"] for run in runs] == ["success"] * len(ROUTES)
            expected = {route: outcomes_by_record(embedded.settings, route)[1] for route in ROUTES}

        found = processes.wait_for(
            "finished backfill runs",
            lambda: (r := dag_runs(metadata)) and all(state in ("success", "failed")
                                                      for of_dag in r.values() for _, state in of_dag) and r,
            timeout=TIMEOUT_S)
        assert found == {route: [("backfill", "success")] * n for route, n in BACKFILL_RUNS.items()}, \
            f"{found}\n{processes.tails()}\ntask logs: {w.settings.logs_dir / 'airflow'}"

        got = {route: outcomes_by_record(w.settings, route) for route in ROUTES}
        by_worker = tasks_by_worker(metadata)
        assert set(by_worker) == set(WORKERS), by_worker
        for route, (worked, _) in got.items():  # the partitions of the run that pulled: both workers took some
            took = {worker for worker, tasks in by_worker.items()
                    if any(run_id == worked and t.startswith(f"{route}.partition.") and t.endswith("]")
                           for run_id, t in tasks)}
            assert took == set(WORKERS), (route, worked, by_worker)

        with pyodbc.connect(w.conn_str) as conn:
            seeded = set(dossier_db.truth(conn))
        dossiers = got[ROUTES[0]][1]
        assert sorted(code for code, _ in dossiers) == sorted(seeded) and len(seeded) == SEED
        assert not [key for key, (outcome, _, _) in dossiers.items() if outcome == PENDING]
        for route in ROUTES:
            assert got[route][1] == expected[route], route
        audit = verify_runs(Ledger(state_db), keys_dir=w.settings.keys_dir)
        assert (audit.problems, audit.runs_checked) == ([], sum(BACKFILL_RUNS.values()))
        # Staged in the bucket alone, and nothing (personal data) left there once the runs succeeded.
        assert not (w.settings.home / "staging").exists()
        bucket = s3_bucket.removeprefix("s3://").split("/")[0]
        assert s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def backfill_together(processes: Processes, api: str, s: Settings, metadata: Engine, env: dict[str, str]) -> None:
    """A backfill of each route, made as the README tells a province to: ``airflow backfill create``
    with at most one run at a time (two runs of one route would pull the same records), each run in
    a partition per worker (``--dag-run-conf``). Made once the DAGs are parsed, while they are
    still paused, which holds their runs queued; unpaused together once both workers listen, so
    that both routes' first runs start in one scheduler loop and each stage's two partitions find
    a worker each."""
    processes.wait_for("parsed DAGs", lambda: _parsed(metadata) >= set(ROUTES))
    now = dt.datetime.now(dt.timezone.utc)
    to = (now - dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
    to -= dt.timedelta(minutes=to.minute % 15)
    window = ["--from-date", (to - dt.timedelta(minutes=5)).isoformat(), "--to-date", to.isoformat()]
    conf = ["--dag-run-conf", json.dumps({"partitions": len(WORKERS)})]
    for route in ROUTES:
        processes.start(f"backfill-{route}", airflow("backfill", "create", "--dag-id", route, *window,
                                                     "--max-active-runs", "1", *conf), env)
    for route in ROUTES:
        processes.finish(f"backfill-{route}", timeout=120)
    headers = {"Authorization": f"Bearer {processes.wait_for('API token', lambda: _token(api, s))}"}
    for name in WORKERS:
        processes.wait_for(f"{name} ready", lambda: f"{name} ready." in processes.log(name))
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
