"""``lienthong``: one command in front of the project (demo, sandbox, keys, run)."""

from __future__ import annotations

import json
import signal
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from lienthong.staging import STAGES

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
sandbox_app = typer.Typer(no_args_is_help=True, help="The stand-ins for the external systems.")
keys_app = typer.Typer(no_args_is_help=True, help="Sandbox keys and certificates.")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def _progress_table(progress: dict[str, int]) -> Table:
    table = Table(title="dossier_sync: records per stage", min_width=50)
    for name in STAGES:
        table.add_column(name, justify="right")
    table.add_row(*(f"{progress.get(name, 0):,}" for name in STAGES))
    return table


@app.command()
def demo(
    records: int = typer.Option(2000, "--records", "-n", min=1, help="dossiers to seed into an empty sandbox"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the summary"),
) -> None:
    """Seed the sandbox, run the dossier_sync DAG through Airflow, and report what happened."""
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
    key = summary["answer_key"]
    console.print()
    console.print(f"[bold]Run[/] {summary['run_id']}: {summary['status']} in {summary['seconds']} s "
                  f"(Airflow DAG run: {summary['dag_run_state']})")
    console.print(f"  pulled {summary['pulled']:,} = acknowledged {summary['acknowledged']:,} "
                  f"+ quarantined {summary['quarantined']:,} + pending {summary['pending']:,}")
    console.print(f"  pushed this run {summary['pushed']:,}; already acknowledged earlier "
                  f"{summary['already_acknowledged']:,}; the portal now holds {summary['portal_stored']:,} dossiers")
    if summary["quarantine_reasons"]:
        table = Table(title="Quarantine reasons (a record may have several)")
        table.add_column("rule")
        table.add_column("records", justify="right")
        for rule, count in sorted(summary["quarantine_reasons"].items(), key=lambda kv: -kv[1]):
            table.add_row(rule, str(count))
        console.print(table)
    console.print(f"  answer key: {key['bad_quarantined_for_their_reason']} of {key['bad_pulled']} deliberately bad "
                  f"dossiers quarantined for their reason; good dossiers quarantined: {len(key['good_quarantined'])}")
    console.print(f"  Airflow's log of the run: {summary['log_file']}")


@app.command()
def run(route: str = typer.Argument("dossier_sync", help="the route (DAG id) to run")) -> None:
    """Run one route once through Airflow with the connections of this environment."""
    from lienthong.demo import run_route
    from lienthong.settings import settings

    result = run_route(settings(), route)
    typer.echo(json.dumps({k: result[k] for k in ("run_id", "status", "counts", "quarantine_reasons", "log_file")},
                          ensure_ascii=False, default=str))
    if result["status"] != "success":
        raise typer.Exit(1)


@sandbox_app.command("up")
def sandbox_up(
    records: int = typer.Option(2000, "--records", "-n", min=0, help="dossiers to seed if the database is empty"),
    population_port: int = typer.Option(8081, help="port of the population database (SOAP)"),
    portal_port: int = typer.Option(8082, help="port of the national portal (REST)"),
    latency_ms: float = typer.Option(20.0, help="deliberate latency of the population database per call"),
) -> None:
    """Start the sandbox in the foreground and print the Airflow connections that reach it."""
    import pyodbc

    from lienthong.connectors import connection
    from lienthong.connectors.connection import use_connections
    from lienthong.connectors.odbc import connection_string_for
    from lienthong.sandbox import dossier_db, services
    from lienthong.settings import settings
    from lienthong.signing.keys import init_keys

    s = settings()
    init_keys(s.keys_dir)
    sandbox = services.start(s, {"population": population_port, "portal": portal_port},
                             latency_ms={"population": latency_ms})
    with sandbox:
        conns = sandbox.connections()
        use_connections(conns)
        conn_str = connection_string_for(connection.DOSSIER_DB)
        with pyodbc.connect(conn_str) as conn:
            empty = dossier_db.count_dossiers(conn) == 0
        if empty and records:
            services.seed_dossiers(s, conn_str, records)
        console.print(f"population database (SOAP): {sandbox.url('population')}/population?wsdl")
        console.print(f"national portal (REST):     {sandbox.url('portal')}/api/")
        console.print(f"dossier database (ODBC):    {conns[connection.DOSSIER_DB]['schema']}")
        console.print("fault switches: PUT {\"latency_ms\": .., \"error_rate\": ..} to <service>/_sandbox/faults")
        console.print("Airflow connections for this sandbox:")
        for conn_id, conn in conns.items():
            typer.echo(f"export AIRFLOW_CONN_{conn_id.upper()}='{json.dumps(conn)}'")
        console.print("Ctrl-C stops the sandbox.")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


@sandbox_app.command("seed")
def sandbox_seed(records: int = typer.Option(..., "--records", "-n", min=1, help="dossiers to add")) -> None:
    """Add dossiers to the sandbox database (new, so the next run moves exactly these)."""
    import datetime as dt

    from lienthong.connectors import connection
    from lienthong.connectors.connection import use_connections
    from lienthong.connectors.odbc import connection_string_for
    from lienthong.sandbox import services
    from lienthong.settings import settings

    s = settings()
    use_connections({connection.DOSSIER_DB: services.dossier_db_connection(s)})
    conn_str = connection_string_for(connection.DOSSIER_DB)
    services.seed_dossiers(s, conn_str, records, updated_at=dt.datetime.now().replace(microsecond=0))
    console.print(f"added {records} dossiers")


@keys_app.command("init")
def keys_init(force: bool = typer.Option(False, help="replace existing keys")) -> None:
    """Create the sandbox CA and the agency's signing key and certificate (never for production)."""
    from lienthong.settings import settings
    from lienthong.signing.keys import init_keys

    paths = init_keys(settings().keys_dir, force=force)
    console.print(f"keys in {settings().keys_dir}: {paths}")


if __name__ == "__main__":
    app()
