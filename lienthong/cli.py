"""``lienthong``: one command in front of the project (demo, sandbox, keys, run)."""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import typer
from cryptography.x509 import ReasonFlags
from rich.live import Live
from rich.table import Table

from lienthong.audit.cli import audit_app
from lienthong.consoles import err as console
from lienthong.registry.cli import connectors_app
from lienthong.settings import MAX_PARTITIONS, PARTITIONS_CONF_KEY
from lienthong.staging import STAGES

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
sandbox_app = typer.Typer(no_args_is_help=True, help="The stand-ins for the external systems.")
keys_app = typer.Typer(no_args_is_help=True, help="Sandbox keys and certificates.")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(keys_app, name="keys")
app.add_typer(connectors_app, name="connectors")
app.add_typer(audit_app, name="audit")


def _progress_table(progress: dict[str, dict[str, int]]) -> Table:
    table = Table(title="records per stage, per route", min_width=70)
    table.add_column("route")
    for name in STAGES:
        table.add_column(name, justify="right")
    for route, stages in progress.items():
        table.add_row(route, *(f"{stages.get(name, 0):,}" for name in STAGES))
    return table


@app.command()
def demo(
    records: int = typer.Option(1000, "--records", "-n", min=1, help="dossiers to seed into each empty dossier system"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the summary"),
) -> None:
    """Seed the sandbox, register the example connectors, run their DAGs through Airflow, report."""
    from lienthong.demo import run_demo

    notes = (lambda _: None) if as_json else (lambda text: console.print(f"[cyan]•[/] {text}"))
    if as_json:
        summary = run_demo(records, on_note=notes)
        typer.echo(json.dumps(summary, ensure_ascii=False, default=str))
    else:
        with Live(_progress_table({}), console=console, refresh_per_second=4) as live:
            summary = run_demo(records, on_progress=lambda p: live.update(_progress_table(p)), on_note=notes)
        _print_summary(summary)
    if summary["status"] != "success":
        raise typer.Exit(1)


def _print_summary(summary: dict[str, Any]) -> None:
    console.print()
    table = Table(title=f"Demo: {summary['status']} in {summary['seconds']} s")
    for column in ("route", "status", "pulled", "acknowledged", "quarantined", "pending", "pushed",
                   "already sent", "bad dossiers caught", "good held back"):
        table.add_column(column, justify="left" if column in ("route", "status") else "right")
    for r in summary["routes"]:
        key = r.get("answer_key")
        table.add_row(r["route"], r["status"], *(f"{r[k]:,}" for k in ("pulled", "acknowledged", "quarantined",
                                                                        "pending", "pushed", "already_acknowledged")),
                      f"{key['bad_quarantined_for_their_reason']}/{key['bad_pulled']}" if key else "-",
                      str(len(key["good_quarantined"])) if key else "-")
    console.print(table)
    reasons: dict[str, int] = {}
    for r in summary["routes"]:
        for rule, count in r["quarantine_reasons"].items():
            reasons[rule] = reasons.get(rule, 0) + count
    if reasons:
        table = Table(title="Quarantine reasons, all routes (a record may have several)")
        table.add_column("rule")
        table.add_column("records", justify="right")
        for rule, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            table.add_row(rule, str(count))
        console.print(table)
    portal = summary["portal"]
    console.print(f"  the portal now holds {portal['dossiers']:,} dossiers and {portal['progress']:,} progress entries")
    ledger = summary["ledger"]
    if ledger["problems"]:
        console.print(f"  [red]ledger: {len(ledger['problems'])} problem(s)[/]; see `lienthong audit verify --all`")
    else:
        console.print(f"  ledger: {ledger['runs_checked']} run(s) and {ledger['records_checked']:,} record outcomes "
                      "verified (signed, time-stamped, chained)")
    console.print("  auditors: `lienthong audit runs`, `lienthong audit trace CODE`, "
                  "`lienthong audit export RUN --out DIR`")
    console.print(f"  Airflow's log of the runs: {summary['log_file']}")


@app.command()
def run(
    route: str = typer.Argument(..., help="the route (DAG id, <agency>__<stream>) to run"),
    partitions: int = typer.Option(None, min=1, max=MAX_PARTITIONS,
                                   help="partitions for this run's stages after extract, given as its DAG run conf "
                                        "(as a trigger or a backfill gives it); default: LIENTHONG_PARTITIONS"),
) -> None:
    """Run one route once through Airflow with the connections of this environment."""
    from lienthong.demo import run_routes
    from lienthong.settings import settings

    (result,) = run_routes(settings(), [route], conf={PARTITIONS_CONF_KEY: partitions} if partitions else None)
    typer.echo(json.dumps({k: result[k] for k in ("run_id", "airflow_run_id", "dag_run_state", "status", "counts",
                                                  "quarantine_reasons", "log_file")},
                          ensure_ascii=False, default=str))
    if result["status"] != "success":
        raise typer.Exit(1)


@app.command()
def bench(
    records: int = typer.Option(100_000, "--records", "-n", min=1, help="dossiers to seed and run through the route"),
    sample: int = typer.Option(None, min=1, help="dossiers for the naive way (default: min(records, 200))"),
    home: Path = typer.Option(None, help="data folder to use and keep (default: a fresh one, removed after)"),
    partitions: int = typer.Option(1, min=1, help="partitions run at once, each in a process, as a deployment "
                                                  "with that many worker slots runs them (the embedded run: 1)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the tables"),
) -> None:
    """Time the dossier route end to end in a private sandbox, against the naive way and the floor."""
    from lienthong.bench.report import show
    from lienthong.bench.run import bench as run_bench

    notes = (lambda _: None) if as_json else (lambda text: console.print(f"[cyan]•[/] {text}"))
    with _stdout_to_stderr(as_json):
        result = run_bench(records, sample, home, partitions, on_note=notes)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        show(result, console)


@contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """Airflow's logger writes warnings to file descriptor 1 when it is not a terminal; with
    ``--json`` the JSON must be all there is on stdout, so the descriptor itself is redirected."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@sandbox_app.command("up")
def sandbox_up(
    records: int = typer.Option(1000, "--records", "-n", min=0, help="dossiers to seed into each empty dossier system"),
    population_port: int = typer.Option(8081, help="port of the population database (SOAP)"),
    portal_port: int = typer.Option(8082, help="port of the national portal (REST)"),
    latency_ms: float = typer.Option(20.0, help="deliberate latency of the population database per call"),
) -> None:
    """Start the sandbox in the foreground and print the Airflow connections that reach it."""
    from lienthong.connectors.connection import use_connections
    from lienthong.demo import SYSTEMS
    from lienthong.sandbox import services
    from lienthong.sandbox.serve import SERVICES
    from lienthong.settings import settings
    from lienthong.signing.keys import init_keys

    s = settings()
    init_keys(s.keys_dir)
    ports = dict.fromkeys(SERVICES, 0) | {"population": population_port, "portal": portal_port}
    with services.start(s, ports, latency_ms={"population": latency_ms}) as sandbox:
        conns = sandbox.connections()
        use_connections(conns)
        for system in SYSTEMS:
            if records and not services.answer_key(s, system):
                services.seed_system(s, system, records)
        for name in SERVICES:
            console.print(f"{name:>12}: {sandbox.url(name)}")
        console.print("fault switches: PUT {\"latency_ms\": .., \"error_rate\": .., "
                      "\"lose_reply_rate\": .., \"cut_rate\": ..} "
                      "to <service>/_sandbox/faults (GET shows them and what struck)")
        console.print("Airflow connections for this sandbox:")
        for conn_id, conn in conns.items():
            typer.echo(f"export AIRFLOW_CONN_{conn_id.upper()}='{json.dumps(conn)}'")
        console.print("Ctrl-C stops the sandbox.")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


@sandbox_app.command("seed")
def sandbox_seed(
    records: int = typer.Option(..., "--records", "-n", min=1, help="dossiers to add"),
    system: str = typer.Option("odbc", help="the dossier system: odbc, soap or rest"),
) -> None:
    """Add dossiers to a sandbox dossier system (new, so the next run moves exactly these)."""
    import datetime as dt

    from lienthong.sandbox import services
    from lienthong.settings import settings

    services.seed_system(settings(), system, records, updated_at=dt.datetime.now().replace(microsecond=0))
    console.print(f"added {records} dossiers to the {system} system")


@keys_app.command("init")
def keys_init(force: bool = typer.Option(False, help="replace existing keys")) -> None:
    """Create the sandbox CA and the agency's signing key and certificate (never for production)."""
    from lienthong.settings import settings
    from lienthong.signing.keys import init_keys

    paths = init_keys(settings().keys_dir, force=force)
    console.print(f"keys in {settings().keys_dir}: {paths}")


# CRLReason names as typed on a command line: key-compromise, superseded, cessation-of-operation...
_REASONS = {flag.name.replace("_", "-"): flag for flag in ReasonFlags if flag is not ReasonFlags.remove_from_crl}


@keys_app.command("revoke")
def keys_revoke(
    name: str = typer.Argument(None, help="the key whose certificate to revoke (e.g. agency)"),
    serial: str = typer.Option(None, help="or the certificate's serial number, in hex"),
    reason: str = typer.Option("unspecified", help=f"one of {', '.join(_REASONS)}"),
) -> None:
    """Revoke a certificate of the sandbox CA and reissue its CRL (ca.crl.pem, which verifiers load).

    superseded (after a rotation) keeps what was signed before; key-compromise voids it all.
    """
    from cryptography import x509

    from lienthong.settings import settings
    from lienthong.signing.keys import KeyPaths, revoke

    if (name is None) == (serial is None):
        raise typer.BadParameter("give a key name or --serial, not both")
    if reason not in _REASONS:
        raise typer.BadParameter(f"unknown reason {reason!r}: one of {', '.join(_REASONS)}")
    keys_dir = settings().keys_dir
    if name is not None:
        cert_file = KeyPaths.named(keys_dir, name)[1]
        if not cert_file.exists():
            raise typer.BadParameter(f"no certificate {cert_file}")
        number = x509.load_pem_x509_certificates(cert_file.read_bytes())[0].serial_number
    else:
        number = int(serial, 16)
    revoke(keys_dir, number, _REASONS[reason])
    console.print(f"revoked serial {number:x} ({reason}); CRL in {KeyPaths.in_dir(keys_dir).crl}")


@keys_app.command("crl")
def keys_crl() -> None:
    """Renew the sandbox CA's CRL, keeping its revocations (verifiers refuse an out-of-date CRL)."""
    from lienthong.settings import settings
    from lienthong.signing.keys import KeyPaths, issue_crl

    crl = issue_crl(settings().keys_dir)
    console.print(f"CRL with {len(crl)} revocations, next update {crl.next_update_utc:%Y-%m-%d}, "
                  f"in {KeyPaths.in_dir(settings().keys_dir).crl}")


if __name__ == "__main__":
    app()
