"""``lienthong audit``: runs, a run, a dossier's trace, verification and export, for auditors.

Everything printed comes from :mod:`lienthong.audit.report`, which holds hashes, dossier codes
and masked reasons only. ``verify`` exits 1 when anything does not hold, so it can gate a script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from lienthong.consoles import err, out

audit_app = typer.Typer(no_args_is_help=True, help="The run ledger, for auditors: runs, trace, verify, export.")
JSON = typer.Option(False, "--json", help="print JSON instead of tables")


def _ledger() -> Any:
    from lienthong.audit.ledger import Ledger
    from lienthong.settings import settings

    return Ledger(settings().state_db_url)


def _json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, default=str, indent=2))


def _unknown(run_id: str) -> typer.Exit:
    err.print(f"[red]no run[/] {run_id}", highlight=False)
    return typer.Exit(1)


@audit_app.command()
def runs(route: Optional[str] = typer.Option(None, "--route", help="only this route"), as_json: bool = JSON) -> None:
    """Runs, newest first, with their counts and seal."""
    from lienthong.audit import report

    rows = report.list_runs(_ledger(), route)
    if as_json:
        return _json(rows)
    table = Table(title="runs")
    for column in ("run", "route", "status", "finished", "seq", "pulled", "ack", "quarantined", "pending", "seal"):
        table.add_column(column, justify="right" if column in ("seq", "pulled", "ack", "quarantined", "pending")
                         else "left")
    for r in rows:
        counts = r["counts"] or {}
        seal = ("signed+stamped" if r["stamped"] else "signed, unstamped") if r["sealed"] else "-"
        table.add_row(r["run_id"], r["route"], r["status"], str(r["finished_at"] or "-"), str(r["seq"] or "-"),
                      *(str(counts.get(k, "-")) for k in ("pulled", "acknowledged", "quarantined", "pending")), seal)
    out.print(table)


@audit_app.command()
def show(run_id: str = typer.Argument(..., metavar="RUN"), as_json: bool = JSON) -> None:
    """One run: its manifest (what it was made of) and its first records' outcomes with reasons.

    The first 1,000 records in leaf order, with how many the run holds, as on the web page: a
    terminal table of a million rows is read by nobody and takes minutes to lay out, and held
    whole it takes gigabytes. Every record, for a script or a diff, is in ``audit export``'s
    records.jsonl, written a chunk at a time and verifiable with openssl alone.
    """
    from lienthong.audit import report

    try:
        detail = report.run_detail(_ledger(), run_id)
    except report.UnknownRun:
        raise _unknown(run_id) from None
    if as_json:
        return _json(detail)
    m = detail["manifest"] or {}
    out.print(f"run {run_id}  route {detail['route']}  status {detail['status']}  seq {detail['seq']}", highlight=False)
    for name in ("connector", "mapping", "schema", "suite", "cursor", "counts", "quarantine_reasons", "tree"):
        if name in m:
            out.print(f"  {name}: {json.dumps(m[name], ensure_ascii=False)}", highlight=False)
    out.print(f"  manifest sha256: {detail['manifest_hash']}  previous: {m.get('prev_manifest_hash')}", highlight=False)
    table = Table(title="records (leaf order)")
    for column in ("leaf", "dossier", "outcome", "portal", "reasons"):
        table.add_column(column)
    for o in detail["outcomes"]:
        reasons = "; ".join(r["message"] for r in o["reasons"] or [])
        table.add_row(str(o["leaf_index"]), o["record_key"], o["outcome"], o["ack_status"] or "-", reasons)
    out.print(table)
    if detail["outcomes_total"] > len(detail["outcomes"]):
        out.print(f"the first {len(detail['outcomes'])} of {detail['outcomes_total']} records are shown; "
                  f"every one is in the bundle of: lienthong audit export {run_id} --out DIR", highlight=False)


@audit_app.command()
def trace(code: str = typer.Argument(..., help="the dossier code (MaHoSo)"), as_json: bool = JSON) -> None:
    """A dossier's journey across runs: hashes, gate result, signature, portal answer, proof."""
    from lienthong.audit import report

    steps = report.trace(_ledger(), code)
    if as_json:
        return _json(steps)
    if not steps:
        err.print(f"no run met dossier {code}", highlight=False)
        raise typer.Exit(1)
    for s in steps:
        out.print(f"run {s['run_id']} ({s['route']}, {s['run_status']}, started {s['started_at']})", highlight=False)
        out.print(f"  outcome {s['outcome']}; source row {s['source_hash']}; "
                  f"payload {s['payload_hash']}", highlight=False)
        for r in s["reasons"] or []:
            out.print(f"  reason {r['rule']}: {r['message']}", highlight=False)
        if s["version"]:
            out.print(f"  version {s['version']} signed by certificate {s['signer']}", highlight=False)
        if s["ack_status"]:
            out.print(f"  portal: {s['ack_status']} (code {s['ack_code']}) at {s['acked_at']}", highlight=False)
        proof = {True: "valid", False: "INVALID", None: "run not sealed"}[s["proof_ok"]]
        out.print(f"  leaf {s['leaf_index']} of {s['tree_size']}, proof to root {s['merkle_root']}: {proof}",
                  highlight=False)


@audit_app.command()
def verify(run_id: Optional[str] = typer.Argument(None, metavar="[RUN]"),
           all_runs: bool = typer.Option(False, "--all",
                                         help="every run and every route's chain (the default)")) -> None:
    """Recompute records, Merkle roots, signatures, time stamps and chains; exit 1 on any problem."""
    from lienthong.audit import report

    if run_id and all_runs:
        err.print("give a RUN or --all, not both")
        raise typer.Exit(2)
    try:
        result = report.verify(_ledger(), run_id)
    except report.UnknownRun:
        raise _unknown(run_id or "") from None
    for problem in result.problems:
        out.print(str(problem), highlight=False, markup=False)
    summary = f"{result.runs_checked} run(s), {result.records_checked} record(s) checked"
    if result.ok:
        out.print(f"OK: {summary}", highlight=False)
        return
    out.print(f"FAILED: {len(result.problems)} problem(s); {summary}", highlight=False)
    raise typer.Exit(1)


@audit_app.command()
def export(run_id: str = typer.Argument(..., metavar="RUN"),
           out_dir: Path = typer.Option(..., "--out", help="folder to write the bundle into (as RUN/)")) -> None:
    """Write the run's self-contained bundle; an auditor checks it with `sh verify.sh`."""
    from lienthong.audit import report

    try:
        bundle = report.export(_ledger(), run_id, out_dir)
    except report.UnknownRun:
        raise _unknown(run_id) from None
    except ValueError as exc:
        err.print(f"[red]refused:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"bundle written to {bundle}; verify with: sh {bundle / 'verify.sh'}", highlight=False)
