"""``lienthong demo``: every example connector registered, approved and run through Airflow.

Keys; the sandbox (dossier systems over ODBC, SOAP and REST, the population database, the portal,
the time-stamping authority); each dossier system seeded when empty; the three example manifests
registered and approved, as an agency and an engineer would; then one run of every approved
route's DAG through Airflow, watched stage by stage, and a summary in which each dossier route
is checked against its system's answer key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from lienthong import airflow_env
from lienthong.audit.ledger import Ledger
from lienthong.audit.verify import verify_runs
from lienthong.connectors.connection import use_connections
from lienthong.sandbox import seed, services
from lienthong.settings import Settings, settings
from lienthong.staging import STAGES, latest_run

EXAMPLES_DIR = Path(__file__).resolve().parent / "registry" / "examples"
# A provincial department on ODBC, a district on SOAP, a commune on REST.
EXAMPLES = ("so-tu-phap.yaml", "huyen-soap.yaml", "xa-rest.yaml")
SYSTEMS = ("odbc", "soap", "rest")
ACTOR = "lienthong-demo"

Progress = Callable[[dict[str, dict[str, int]]], None]


def run_routes(s: Settings, routes: list[str], on_progress: Progress | None = None,
               conf: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One DAG run of each route, in order, through Airflow, each with ``conf`` as its DAG run conf;
    returns the ledger's record of each."""
    env = airflow_env.environment(s)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    log_file = s.logs_dir / f"run-{stamp}.log"
    airflow_env.ensure_metadata_db(s, env, log_file)
    result_file = s.home / f".result-{stamp}.jsonl"
    started = time.time()
    process = airflow_env.start_dag_runs(routes, env, result_file, log_file, conf)
    while process.poll() is None:
        if on_progress:
            on_progress(progress(s, routes, started))
        time.sleep(0.3)
    lines = [json.loads(line) for line in result_file.read_text().splitlines()] if result_file.exists() else []
    result_file.unlink(missing_ok=True)
    failures = [line["error"] for line in lines if "error" in line]
    if failures or len(lines) < len(routes):
        raise RuntimeError(f"{'; '.join(failures) or 'the run process died'}: see {log_file}")
    if on_progress:
        on_progress(progress(s, routes, started))
    ledger = Ledger(s.state_db_url)
    results = []
    for line in lines:
        run = _run_since(ledger, line["dag_id"], started)
        if run is None:
            raise RuntimeError(f"the DAG run of {line['dag_id']} left no run record; see {log_file}")
        seconds = (run["finished_at"] - run["started_at"]).total_seconds() if run["finished_at"] else None
        results.append({"route": line["dag_id"], "dag_run_state": line["state"], "log_file": str(log_file),
                        "seconds": round(seconds, 1) if seconds is not None else None, **run})
    return results


def _run_since(ledger: Ledger, route: str, since: float) -> dict[str, Any] | None:
    run = ledger.latest_run(route)
    return run if run is not None and run["started_at"].timestamp() >= since - 1 else None


def progress(s: Settings, routes: list[str], since: float) -> dict[str, dict[str, int]]:
    """Records per stage of each route's run since ``since``: from staging while it runs, from
    the ledger once settled (a successful run's staging is purged)."""
    ledger = Ledger(s.state_db_url)
    found: dict[str, dict[str, int]] = {}
    for route in routes:
        run = _run_since(ledger, route, since)
        if run is not None and run["finished_at"] is not None:
            stages = (run["counts"] or {}).get("stages", {})
            found[route] = {name: counts.get("records", 0) for name, counts in stages.items()}
            continue
        staging = latest_run(s.staging_dir, route, since)
        if staging is not None:
            found[route] = {name: (staging.stage(name).progress() or {}).get("records", 0) for name in STAGES}
    return found


def register_examples(s: Settings, on_note: Callable[[str], None]) -> list[str]:
    """Register and approve the example manifests (a no-op once done); the approved route names."""
    from lienthong.registry.store import Registry

    registry = Registry(s.state_db_url)
    for name in EXAMPLES:
        connector_id, version, changed = registry.register(EXAMPLES_DIR / name, ACTOR)
        if changed:
            registry.approve(connector_id, ACTOR)
            on_note(f"Registered and approved connector {connector_id} version {version} ({name})")
    routes = registry.approved_routes()
    # Dossiers before their progress, so the portal meets each dossier before its status.
    return [r.name for r in sorted(routes, key=lambda r: (r.connector_id, r.target.name != "dossier_sync", r.name))]


def run_demo(records: int, on_progress: Progress | None = None,
             on_note: Callable[[str], None] = print) -> dict[str, Any]:
    from lienthong.registry.store import Registry
    from lienthong.sandbox.portal import sandbox_stats
    from lienthong.signing.keys import init_keys

    s = settings()
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    init_keys(s.keys_dir)
    started = time.time()
    with services.start(s) as sandbox:
        use_connections(sandbox.connections())
        seeded = {}
        for system in SYSTEMS:
            existing = len(services.answer_key(s, system))
            if existing:
                on_note(f"The {system} dossier system already holds {existing} dossiers: only new or changed ones move")
                seeded[system] = 0
            else:
                on_note(f"Seeding the {system} dossier system with {records} dossiers "
                        f"(about {seed.BAD_SHARE:.0%} deliberately bad)")
                seeded[system] = services.seed_system(s, system, records)
        routes = register_examples(s, on_note)
        runs = run_routes(s, routes, on_progress)
        stats = sandbox_stats(sandbox.url("portal"))
        answer_keys = {system: services.answer_key(s, system) for system in SYSTEMS}
        audit = verify_runs(Ledger(s.state_db_url), keys_dir=s.keys_dir,
                            tsa_ca=Path(sandbox.tsa_connection()["extra"]["ca_file"]))
    registry = Registry(s.state_db_url)
    ledger = Ledger(s.state_db_url)
    summaries = []
    for run in runs:
        route = registry.route(run["route"])
        counts = run["counts"] or {}
        summary = {
            "route": run["route"], "run_id": run["run_id"], "status": run["status"],
            "dag_run_state": run["dag_run_state"], "protocol": route.protocol, "target": route.target.name,
            **{k: counts.get(k, 0) for k in ("pulled", "quarantined", "pushed", "acknowledged", "pending",
                                              "already_acknowledged", "duplicates", "rejected")},
            "quarantine_reasons": run["quarantine_reasons"] or {}, "seconds": run["seconds"],
        }
        if route.target.name == "dossier_sync":
            summary["answer_key"] = check_against_answer_key(ledger.outcomes(run["run_id"]),
                                                             answer_keys[route.protocol])
        summaries.append(summary)
    return {
        "status": "success" if audit.ok and all(r["status"] == "success" for r in summaries) else "failed",
        "seeded": seeded,
        "routes": summaries,
        "portal": {"dossiers": stats["dossiers"], "progress": stats["progress"]},
        "ledger": {"runs_checked": audit.runs_checked, "records_checked": audit.records_checked,
                   "problems": [str(p) for p in audit.problems]},
        "seconds": round(time.time() - started, 1),
        "log_file": runs[0]["log_file"] if runs else None,
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
