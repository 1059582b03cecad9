"""The auditor web page: runs per route, a run's manifest and quarantine, a dossier's trace, export.

Served by Airflow's API server as a plugin app (``plugins/lienthong_audit.py`` mounts it and adds
Airflow's own authentication), so auditors use the Airflow login they already have. The page only
renders what :mod:`lienthong.audit.report` answers; it never reads the tables itself.

Links are relative (``run?id=...``, ``./``) because the app is mounted under a prefix and shown in
an iframe of Airflow's UI, possibly behind a proxy that adds a further prefix. Free text (reason and
problem messages) is masked again here: the page must not be the one place a personal ID slips out.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.params import Depends
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates
from starlette.background import BackgroundTask

from lienthong.audit import report
from lienthong.audit.ledger import Ledger
from lienthong.audit.verify import BAD_SIGNATURE, BAD_TIMESTAMP, MANIFEST_MISMATCH, UNSIGNED, UNSTAMPED
from lienthong.logs import mask_personal_ids
from lienthong.settings import settings

TEMPLATES = Path(__file__).with_name("templates")
COUNT_KEYS = ("pulled", "acknowledged", "quarantined", "pending")
MAX_RECORD_ROWS = report.FIRST_RECORDS  # a run can hold millions of records; the page lists the first ones


def default_ledger() -> Ledger:
    """Read per request: the settings follow the environment the API server was started with."""
    return Ledger(settings().state_db_url)


def create_app(ledger: Callable[[], Ledger] = default_ledger, *,
               dependencies: Sequence[Depends] = ()) -> FastAPI:
    """The auditor app; ``dependencies`` guard every page (the plugin passes Airflow's auth)."""
    app = FastAPI(title="lienthong audit", dependencies=list(dependencies), docs_url=None,
                  redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=TEMPLATES)  # autoescapes .html templates
    templates.env.filters["mask"] = lambda value: mask_personal_ids(str(value)) if value is not None else ""
    templates.env.filters["when"] = when
    templates.env.globals.update(COUNT_KEYS=COUNT_KEYS, verdict=verdict, seal_state=seal_state)

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, route: str | None = None) -> HTMLResponse:
        led = ledger()
        runs = report.list_runs(led, route)
        # Every record of every run recomputed on each visit took seconds per 100,000 records:
        # the index counts them against the signed trees; a run's own page recomputes each.
        problems = _by_run(report.verify(led, every_record=False).problems)
        by_route: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for run in runs:
            by_route[run["route"]].append({**run, "problems": problems.get(run["run_id"], [])})
        listed = {run["run_id"] for run in runs}
        # Problems of runs not in the table (a deleted run row, another route's run) stay in view.
        unattached = [p for run_id, found in problems.items() if run_id not in listed for p in found]
        return page(request, "index.html", routes=dict(sorted(by_route.items())), route=route,
                    unattached=unattached)

    @app.get("/run", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str = Query(..., alias="id", min_length=1)) -> HTMLResponse:
        led = ledger()
        detail = _known(lambda: report.run_detail(led, run_id, limit=MAX_RECORD_ROWS))
        problems = report.verify(led, run_id).problems
        return page(request, "run.html", run=detail, problems=problems,
                    quarantined=detail["quarantined"], quarantined_total=detail["quarantined_total"],
                    outcomes=detail["outcomes"], outcomes_total=detail["outcomes_total"])

    @app.get("/trace", response_class=HTMLResponse)
    def trace_page(request: Request, code: str = "") -> HTMLResponse:
        code = code.strip()
        steps = report.trace(ledger(), code) if code else []
        return page(request, "trace.html", code=code, steps=steps)

    @app.get("/export")
    def export(run_id: str = Query(..., alias="id", min_length=1)) -> FileResponse:
        work = Path(tempfile.mkdtemp(prefix="audit-export-"))
        try:
            bundle = _known(lambda: report.export(ledger(), run_id, work / "bundle"))
            archive = shutil.make_archive(str(work / bundle.name), "zip", root_dir=bundle.parent,
                                          base_dir=bundle.name)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return FileResponse(archive, media_type="application/zip", filename=f"{_safe(bundle.name)}.zip",
                            background=BackgroundTask(shutil.rmtree, work, ignore_errors=True))

    return app


def when(value: dt.datetime | str | None) -> str:
    """A time as auditors compare it with logs: UTC to the second (SQLite gives it back naive, in UTC)."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def verdict(problems: Sequence[report.Problem]) -> tuple[str, str]:
    """(css class, label) of a run's verification; a missing time stamp alone is a warning, since
    the signature and every record still hold (the TSA was down when the run was sealed)."""
    if not problems:
        return "ok", "verified"
    if all(p.kind == UNSTAMPED for p in problems):
        return "warn", "verified, not time-stamped"
    return "bad", f"{len(problems)} problem{'' if len(problems) == 1 else 's'}"


def seal_state(problems: Sequence[report.Problem], stamped: bool) -> dict[str, str]:
    """What the run page says of the manifest's signature and time stamp, from verify's findings."""
    kinds = {p.kind for p in problems}
    if UNSIGNED in kinds:
        signature = "missing"
    elif BAD_SIGNATURE in kinds:
        signature = "does not verify"
    elif MANIFEST_MISMATCH in kinds:
        signature = "not trusted: the stored manifest was changed"
    else:
        signature = "valid, by the platform key"
    if not stamped or UNSTAMPED in kinds:
        timestamp = "none"
    elif not signature.startswith("valid"):
        timestamp = "not checked: the signature it stamps does not hold"
    elif BAD_TIMESTAMP in kinds:
        timestamp = "does not verify"
    else:
        timestamp = "valid (RFC 3161)"
    return {"signature": signature, "timestamp": timestamp}


def _by_run(problems: Sequence[report.Problem]) -> dict[str | None, list[report.Problem]]:
    grouped: dict[str | None, list[report.Problem]] = defaultdict(list)
    for problem in problems:
        grouped[problem.run_id].append(problem)
    return grouped


def _known(answer: Callable[[], Any]) -> Any:
    """An unknown run is a 404, a run that cannot be exported yet a 409, not a server error."""
    try:
        return answer()
    except report.UnknownRun as exc:
        raise HTTPException(404, f"no run {exc}") from exc
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc


def _safe(name: str) -> str:
    """A download file name without the characters run ids may carry (``:``, ``+``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
