"""Running lienthong's DAGs through Airflow itself, embedded: SQLite metadata, no servers.

Airflow reads the project's ``airflow.cfg`` and keeps its database and logs in the data folder.
A DAG run happens in a child process (``python -m lienthong.airflow_env DAG_ID RESULT_FILE``)
calling ``dag.test()``: the same scheduling loop, task runner and XCom as a real deployment, with
Airflow's own output going to a log file while the parent shows progress.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lienthong.settings import PROJECT_ROOT, Settings


def environment(s: Settings) -> dict[str, str]:
    """The process environment for Airflow: this one's (with its AIRFLOW_CONN_*), plus the paths."""
    s.tmp_dir.mkdir(parents=True, exist_ok=True)
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
    s.airflow_home.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT)
    marker.touch()


def start_dag_run(dag_id: str, env: dict[str, str], result_file: Path, log_file: Path) -> subprocess.Popen:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_file, "ab")
    return subprocess.Popen([sys.executable, "-m", "lienthong.airflow_env", dag_id, str(result_file)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def _run(dag_id: str, result_file: Path) -> int:
    """In the child: parse the DAG folder as the scheduler would and run one DAG run."""
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=conf.get("core", "dags_folder"))
    if bag.import_errors:
        result_file.write_text(json.dumps({"error": "DAG import errors", "detail": bag.import_errors}))
        return 2
    dag = bag.get_dag(dag_id)
    if dag is None:
        result_file.write_text(json.dumps({"error": f"no DAG {dag_id!r} in the DAG folder"}))
        return 2
    dag_run = dag.test()
    result_file.write_text(json.dumps({"dag_id": dag_id, "run_id": dag_run.run_id, "state": getattr(dag_run.state, "value", str(dag_run.state))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_run(sys.argv[1], Path(sys.argv[2])))
