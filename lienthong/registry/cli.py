"""``lienthong connectors``: register, check, approve, disable and list connector manifests.

Every refusal is printed as the reason and exit status 1, never as a traceback: the person at the
terminal is an agency's integrator or an engineer, and the message is all they need.
"""

from __future__ import annotations

import getpass
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.table import Table

from lienthong.consoles import err, out
from lienthong.registry.located import Invalid

connectors_app = typer.Typer(no_args_is_help=True, help="Connector manifests: register, check, approve, list.")
BY = typer.Option(None, "--by", help="who does this (default: the logged-in user)")


def _registry() -> Any:
    from lienthong.registry.store import Registry
    from lienthong.settings import settings

    return Registry(settings().state_db_url)


@contextmanager
def _refusals() -> Iterator[None]:
    """Turns the registry's refusals into a message and exit status 1."""
    from lienthong.registry.store import RegistryError

    try:
        yield
    except Invalid as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False)
        err.print(f"[red]refused:[/] {len(exc.problems)} problem(s); nothing was registered")
        raise typer.Exit(1) from None
    except (RegistryError, KeyError) as exc:
        err.print(f"[red]refused:[/] {exc.args[0] if exc.args else exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None


@connectors_app.command()
def register(file: Path = typer.Argument(..., help="the manifest (YAML)"), by: Optional[str] = BY) -> None:
    """Check a manifest and its mappings; store it as a new version if it changed."""
    with _refusals():
        connector_id, version, changed = _registry().register(file, by or getpass.getuser())
    if changed:
        out.print(f"registered {connector_id} version {version}; it runs once approved: "
                  f"lienthong connectors check {connector_id}, then lienthong connectors approve {connector_id}")
    else:
        out.print(f"{connector_id} unchanged: version {version} already holds this content")


@connectors_app.command()
def check(connector_id: str = typer.Argument(..., metavar="ID"),
          version: Optional[int] = typer.Option(None, help="default: the version awaiting approval, "
                                                           "else the live one")) -> None:
    """Connect to the system for real and compare what it offers with the manifest and mapping."""
    from lienthong.mappings.spec import MappingSpec
    from lienthong.registry.live import check_stream

    with _refusals():
        stored = _registry().version(connector_id, version)
    m = stored.manifest
    out.print(f"{connector_id} version {stored.version} ({stored.status}): {m.system.protocol} "
              f"through connection {m.system.connection_id}", highlight=False)
    failed = False
    for s in m.streams:
        spec = MappingSpec.model_validate(stored.mappings[s.name]["spec"])
        result = check_stream(m.system.protocol, m.system.connection_id, m.source_stream(s), spec)
        out.print(f"\n[bold]stream {s.name}[/] (mapping {s.mapping}):", highlight=False)
        if result.error is not None:
            failed = True
            out.print(f"  [red]cannot read the system:[/] {result.error}", markup=True, highlight=False)
            continue
        probe = result.probe
        assert probe is not None
        for note in probe.notes:
            out.print(f"  {note}", markup=False, highlight=False)
        out.print(f"  offers {len(probe.fields)} fields: {', '.join(sorted(probe.fields))}", markup=False,
                  highlight=False)
        for name, columns in sorted(probe.children.items()):
            out.print(f"  child {name}: {', '.join(sorted(columns))}", markup=False, highlight=False)
        for line in result.missing:
            out.print(f"  [red]missing:[/] {line}", highlight=False)
        if result.affected:
            out.print(f"  [red]the mapping would read nothing for:[/] {', '.join(result.affected)}", highlight=False)
        failed |= not result.ok
        if result.ok:
            out.print("  [green]everything the manifest and mapping name is offered[/]")
    if failed:
        raise typer.Exit(1)


@connectors_app.command()
def approve(connector_id: str = typer.Argument(..., metavar="ID"), by: Optional[str] = BY,
            version: Optional[int] = typer.Option(None, help="default: the latest version")) -> None:
    """Let a version run: its streams become DAGs, replacing the version approved before."""
    registry = _registry()
    with _refusals():
        approved = registry.approve(connector_id, by or getpass.getuser(), version)
        routes = [r.name for r in registry.approved_routes() if r.connector_id == connector_id]
    out.print(f"approved {connector_id} version {approved}; its DAGs: {', '.join(routes)}")


@connectors_app.command()
def disable(connector_id: str = typer.Argument(..., metavar="ID"), by: Optional[str] = BY) -> None:
    """Stop every route of a connector; approving a version enables it again."""
    with _refusals():
        _registry().disable(connector_id, by or getpass.getuser())
    out.print(f"disabled {connector_id}: its DAGs are gone from the next parse of the DAG folder")


@connectors_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Every connector: status, live and latest version, last run and last error of its routes."""
    rows = _registry().list()
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, default=str))
        return
    table = Table(title="connectors")
    for column in ("id", "agency", "protocol", "status", "version", "routes", "last run", "last error"):
        table.add_column(column)
    for r in rows:
        version = str(r["version"] or "-")
        if r["awaiting_approval"]:
            version += f" (v{r['latest_version']} awaiting approval)"
        table.add_row(r["id"], r["agency"], r["protocol"], r["status"], version, "\n".join(r["routes"]),
                      _run(r["last_run"]), _run(r["last_error"]))
    out.print(table)


def _run(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    return f"{run['route']} {run['status']} {run['at']:%Y-%m-%d %H:%M} ({run['pulled'] or 0} pulled, " \
           f"{run['pending'] or 0} pending)"
