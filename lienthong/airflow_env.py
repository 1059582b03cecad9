"""Running lienthong's DAGs through Airflow itself, embedded: SQLite metadata, no servers.

Airflow reads the project's ``airflow.cfg`` and keeps its database and logs in the data folder.
DAG runs happen in a child process (``python -m lienthong.airflow_env RESULT_FILE CONF DAG_ID...``)
calling ``dag.test()`` for each DAG in turn, with the DAG run conf CONF (JSON): the same scheduling
loop, task runner and XCom as a real deployment, with Airflow's own output going to a log file
while the parent shows progress. One child runs several DAGs so that Airflow's start-up and the
DAG folder parse are paid once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lienthong.settings import PROJECT_ROOT, Settings


def environment(s: Settings) -> dict[str, str]:
    """The process environment for Airflow: this one's (with its AIRFLOW_CONN_*), plus the paths.

    Both folders are made here: with the config outside AIRFLOW_HOME and the metadata in
    PostgreSQL, no Airflow command makes AIRFLOW_HOME, and the API server dies writing its
    generated passwords there if it starts before a scheduler happened to make a log folder."""
    s.tmp_dir.mkdir(parents=True, exist_ok=True)
    s.airflow_home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "LIENTHONG_HOME": str(s.home),
        "LIENTHONG_PROJECT": str(PROJECT_ROOT),
        "AIRFLOW_HOME": str(s.airflow_home),
        "AIRFLOW_CONFIG": str(PROJECT_ROOT / "airflow.cfg"),
        "GX_ANALYTICS_ENABLED": "False",
        # Libraries' temporary files (great-expectations makes a docs folder) stay in the data folder.
        "TMPDIR": str(s.tmp_dir),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def ensure_metadata_db(s: Settings, env: dict[str, str], log_file: Path) -> None:
    """``airflow db migrate`` once per Airflow version (about 5 s), not on every run."""
    import airflow

    marker = s.airflow_home / f".migrated-{airflow.__version__}"
    if marker.exists():
        return
    with open(log_file, "ab") as log:
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT)
    marker.touch()


def start_dag_runs(dag_ids: list[str], env: dict[str, str], result_file: Path, log_file: Path,
                   conf: dict[str, Any] | None = None) -> subprocess.Popen:
    """One run of each DAG, in order, each with ``conf`` as its DAG run conf (as a trigger or a
    backfill gives it); the child writes one JSON line per finished run."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_file, "ab")
    return subprocess.Popen([sys.executable, "-m", "lienthong.airflow_env", str(result_file), json.dumps(conf),
                             *dag_ids],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def _run(result_file: Path, run_conf: dict[str, Any] | None, dag_ids: list[str]) -> int:
    """In the child: parse the DAG folder as the scheduler would, then one DAG run per id."""
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    _serve_only_the_runners_api_version()
    bag = DagBag(dag_folder=conf.get("core", "dags_folder"))
    with open(result_file, "a") as out:
        if bag.import_errors:
            out.write(json.dumps({"error": "DAG import errors", "detail": bag.import_errors}) + "\n")
            return 2
        for dag_id in dag_ids:
            dag = bag.get_dag(dag_id)
            if dag is None:
                out.write(json.dumps({"dag_id": dag_id, "error": f"no DAG {dag_id!r} in the DAG folder"}) + "\n")
                continue
            try:
                dag_run = dag.test(run_conf=run_conf)
            except ParamValidationError as exc:  # Airflow made no run: the conf does not fit the DAG's params
                out.write(json.dumps({"dag_id": dag_id, "error": str(exc).splitlines()[0]}) + "\n")
                continue
            out.write(json.dumps({"dag_id": dag_id, "run_id": dag_run.run_id,
                                  "state": getattr(dag_run.state, "value", str(dag_run.state))}) + "\n")
            out.flush()
    return 0


def _serve_only_the_runners_api_version() -> bool:
    """Build ``dag.test()``'s in-process Execution API for the one version its client speaks.

    ``dag.test()`` serves the Execution API inside this process to this process's own task
    runner, and Cadwyn builds the routes of every version Airflow still serves when the first
    task starts: 4 to 6 s of a run with nothing new, its largest part. A deployment's API server
    builds them once and serves older workers with them; here the only client is the task SDK
    installed beside this Airflow, which speaks the newest version, so only that one is built
    (with the routes kept only for older versions left out, as the newest version leaves them).
    Where the task SDK speaks another version (a mismatched upgrade) or Airflow's bundle has head
    changes, Airflow's own bundle is kept, as it is where a Cadwyn or Airflow upgrade moved the
    names used here (private ones): that costs time, never a run. Returns whether it was narrowed.
    """
    try:
        from cadwyn import HeadVersion, Version, VersionBundle
        from cadwyn.route_generation import _DELETED_ROUTE_TAG

        from airflow.api_fastapi.execution_api import versions
        from airflow.api_fastapi.execution_api.routes import execution_api_router
        from airflow.sdk.api.datamodels._generated import API_VERSION

        served = versions.bundle
        if served.versions[0].value != API_VERSION or served.head_version.changes:
            return False
    except (ImportError, AttributeError):
        return False
    versions.bundle = VersionBundle(HeadVersion(), Version(API_VERSION))
    execution_api_router.routes = [route for route in execution_api_router.routes
                                   if _DELETED_ROUTE_TAG not in getattr(route, "tags", ())]
    return True


if __name__ == "__main__":
    raise SystemExit(_run(Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3:]))
