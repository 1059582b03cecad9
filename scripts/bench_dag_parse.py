"""How long Airflow takes to parse the DAG folder when the registry holds many approved connectors.

Registers and approves N generated manifests (copies of the ODBC example, two streams each, so
2N DAGs) in a throw-away LIENTHONG_HOME, then times ``DagBag`` over ``dags/`` in fresh processes,
as Airflow's DAG processor does: "cold" is the first parse in a process (lienthong's modules
imported by the DAG file included, Airflow itself already imported), "warm" a second parse in the
same process. Prints the medians. A benchmark, not a test: timings on a shared machine vary.

    .venv/bin/python scripts/bench_dag_parse.py [--connectors 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from lienthong import airflow_env  # noqa: E402
from lienthong.connectors.connection import use_connections  # noqa: E402
from lienthong.registry.store import Registry  # noqa: E402
from lienthong.settings import Settings  # noqa: E402
from lienthong.signing.keys import init_keys  # noqa: E402

EXAMPLE = PROJECT / "lienthong" / "registry" / "examples" / "so-tu-phap.yaml"
CHILD = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
times = []
for _ in range(2):
    started = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    times.append(time.perf_counter() - started)
print(json.dumps({"cold": times[0], "warm": times[1], "dags": len(bag.dag_ids), "errors": bag.import_errors}))
"""


def register_many(home: Path, count: int) -> None:
    os.environ["LIENTHONG_HOME"] = str(home)
    os.environ.pop("LIENTHONG_STATE_DB", None)
    s = Settings.from_env()
    init_keys(s.keys_dir)
    use_connections({"lienthong_dossier_db": {"conn_type": "odbc", "schema": str(home / "none.db"),
                                              "extra": {"driver": "SQLite3"}}})
    manifests = home / "manifests"
    manifests.mkdir(parents=True)
    base = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    registry = Registry(s.state_db_url)
    for n in range(count):
        doc = {**base, "id": f"bench-{n:03d}", "agency": {**base["agency"], "slug": f"bench{n:03d}"}}
        path = manifests / f"bench-{n:03d}.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        registry.approve(registry.register(path, "bench")[0], "bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lienthong-bench-") as tmp:
        home = Path(tmp) / "home"
        register_many(home, args.connectors)
        env = airflow_env.environment(Settings.from_env())
        results = []
        for _ in range(args.repeat):
            child = subprocess.run([sys.executable, "-c", CHILD, str(PROJECT / "dags")], env=env,
                                   capture_output=True, text=True)
            if child.returncode:
                raise SystemExit(f"the parse process failed:\n{child.stderr[-3000:]}")
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    if results[0]["errors"]:
        raise SystemExit(f"DAG import errors: {results[0]['errors']}")
    cold = statistics.median(r["cold"] for r in results)
    warm = statistics.median(r["warm"] for r in results)
    print(f"{args.connectors} approved connectors, {results[0]['dags']} DAGs: DagBag parse of dags/ "
          f"median {cold:.3f} s first in a process, {warm:.3f} s again (of {args.repeat} processes)")


if __name__ == "__main__":
    main()
