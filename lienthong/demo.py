"""``lienthong demo``: the whole route on the embedded default, against the sandbox.

Keys, sandbox services, a seeded dossier database, then one run of the ``dossier_sync`` DAG
through Airflow, watched stage by stage, and a summary checked against the sandbox's answer key.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import pyodbc

from lienthong import airflow_env
from lienthong.audit.ledger import Ledger
from lienthong.connectors import connection
from lienthong.connectors.connection import use_connections
from lienthong.connectors.odbc import connection_string_for
from lienthong.sandbox import dossier_db, seed, services
from lienthong.settings import Settings, settings
from lienthong.staging import STAGES, RunStaging

ROUTE = "dossier_sync"
Progress = Callable[[dict[str, int]], None]


def run_route(s: Settings, route: str, on_progress: Progress | None = None) -> dict[str, Any]:
    """One DAG run through Airflow; returns the ledger's record of it."""
    env = airflow_env.environment(s)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    log_file = s.logs_dir / f"run-{route}-{stamp}.log"
    airflow_env.ensure_metadata_db(s, env, log_file)
    result_file = s.home / f".result-{route}-{stamp}.json"
    started = time.time()
    process = airflow_env.start_dag_run(route, env, result_file, log_file)
    while process.poll() is None:
        if on_progress:
            on_progress(stage_progress(s, route, started))
        time.sleep(0.3)
    result = json.loads(result_file.read_text()) if result_file.exists() else {"error": "the run process died"}
    run = Ledger(s.state_db_url).latest_run(route)
    result_file.unlink(missing_ok=True)
    if "error" in result:
        raise RuntimeError(f"{result['error']}: see {log_file}")
    if run is None or run["started_at"].timestamp() < started - 1:
        raise RuntimeError(f"the DAG run left no run record; see {log_file}")
    if on_progress:
        stages = (run["counts"] or {}).get("stages", {})
        on_progress({name: counts.get("records", 0) for name, counts in stages.items()})
    return {"dag_run_state": result["state"], "log_file": str(log_file), "seconds": round(time.time() - started, 1), **run}


def stage_progress(s: Settings, route: str, since: float) -> dict[str, int]:
    """Records per stage of the newest run of ``route`` in staging (empty until extract starts)."""
    runs = [p for p in s.staging_dir.glob(f"{route}__*") if p.stat().st_mtime >= since - 1]
    if not runs:
        return {}
    staging = RunStaging(s.staging_dir, max(runs, key=lambda p: p.stat().st_mtime).name)
    return {name: (staging.stage(name).progress() or {}).get("records", 0) for name in STAGES}


def run_demo(records: int, on_progress: Progress | None = None, on_note: Callable[[str], None] = print) -> dict[str, Any]:
    from lienthong.sandbox.portal import sandbox_stats
    from lienthong.signing.keys import init_keys

    s = settings()
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    init_keys(s.keys_dir)
    with services.start(s) as sandbox:
        use_connections(sandbox.connections())
        conn_str = connection_string_for(connection.DOSSIER_DB)
        with pyodbc.connect(conn_str) as conn:
            existing = dossier_db.count_dossiers(conn)
        seeded = 0
        if existing == 0:
            on_note(f"Seeding the dossier database with {records} dossiers (about {seed.BAD_SHARE:.0%} deliberately bad)")
            seeded = services.seed_dossiers(s, conn_str, records)
        else:
            on_note(f"The dossier database already holds {existing} dossiers: only new or changed ones will move")
        run = run_route(s, ROUTE, on_progress)
        stats = sandbox_stats(sandbox.url("portal"))
        with pyodbc.connect(conn_str) as conn:
            answer_key = dossier_db.truth(conn)
    outcomes = Ledger(s.state_db_url).outcomes(run["run_id"])
    counts = run["counts"] or {}
    return {
        "run_id": run["run_id"],
        "status": run["status"],
        "dag_run_state": run["dag_run_state"],
        "seeded": seeded,
        **{k: counts.get(k, 0) for k in ("pulled", "quarantined", "pushed", "acknowledged", "pending",
                                          "already_acknowledged", "duplicates", "rejected")},
        "portal_stored": stats["dossiers"],
        "quarantine_reasons": run["quarantine_reasons"] or {},
        "answer_key": check_against_answer_key(outcomes, answer_key),
        "seconds": run["seconds"],
        "log_file": run["log_file"],
    }


def check_against_answer_key(outcomes: list[dict[str, Any]], answer_key: dict[str, str | None]) -> dict[str, Any]:
    """Did every deliberately bad dossier end in quarantine for its reason, and no good one?"""
    bad = [o for o in outcomes if answer_key.get(o["record_key"])]
    caught = [o for o in bad if o["outcome"] == "quarantined"
              and seed.DEFECTS[answer_key[o["record_key"]]] in {r["rule"] for r in o["reasons"]}]
    good_held = [o["record_key"] for o in outcomes
                 if not answer_key.get(o["record_key"]) and o["outcome"] == "quarantined"]
    return {"bad_pulled": len(bad), "bad_quarantined_for_their_reason": len(caught),
            "bad_missed": sorted({o["record_key"] for o in bad} - {o["record_key"] for o in caught}),
            "good_quarantined": sorted(good_held)}

