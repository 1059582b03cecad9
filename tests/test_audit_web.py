"""The auditor page inside Airflow: a real ``airflow api-server`` loads the plugin from the project's
plugins folder, and Debian's headless Chromium renders the pages an auditor would open."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest
import requests
from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from lienthong.airflow_env import ensure_metadata_db, environment
from lienthong.audit import web
from lienthong.audit.ledger import ACKNOWLEDGED, FAILED, PENDING, QUARANTINED, SUCCESS, Ledger, outcomes, runs
from lienthong.audit.manifest import platform_sealer
from lienthong.connectors import connection
from lienthong.sandbox import tsa as sandbox_tsa
from lienthong.sandbox.http import ServerThread, free_port
from lienthong.settings import Settings
from lienthong.signing.keys import init_keys

pytestmark = pytest.mark.slow

ROUTE, OTHER_ROUTE = "stp_h40__dossiers", "stp_h40__progress"
FIRST_RUN = "manual__2026-11-20T01:00:00+00:00"  # ':' and '+' as Airflow's run ids carry them
SECOND_RUN, TAMPERED_RUN = "scheduled__2026-11-21T01:00:00+00:00", "manual__2026-11-21T02:00:00+00:00"
DELETED_RUN = "manual__2026-11-22T02:00:00+00:00"
SHORT_RUN = "scheduled__2026-11-22T01:00:00+00:00"  # one of its record rows is deleted
PERSONAL_ID = "079203001234"  # quoted by a reason message, as a gate or the portal might
HEX_RUN = re.compile(r"[0-9a-f]{32,}")
TWELVE_DIGITS = re.compile(r"(?<!\d)\d{12}(?!\d)")


def _outcome(code: str, outcome: str, *, reasons: list[dict[str, str]] | None = None,
             ack: tuple[int, str] | None = None) -> dict[str, Any]:
    digest = hashlib.sha256(f"{code} {outcome}".encode()).hexdigest()
    return {
        "record_key": code, "source_id": f"row-{code[-3:]}", "source_hash": digest, "payload_hash": digest,
        "version": "v1" if ack else None, "outcome": outcome, "reasons": reasons,
        "signature": "eyJhbGciOiJFUzI1NiJ9..sig" if ack else None, "signer": "agency-cert" if ack else None,
        "ack_code": ack[0] if ack else None, "ack_status": ack[1] if ack else None,
        "acked_at": dt.datetime(2026, 11, 20, 1, 5, tzinfo=dt.timezone.utc) if ack and ack[0] == 0 else None,
    }


def _settle(ledger: Ledger, run_id: str, route: str, records: list[dict[str, Any]], keys: Path) -> None:
    counts = {kind: sum(r["outcome"] == kind for r in records) for kind in (ACKNOWLEDGED, QUARANTINED, PENDING)}
    reasons: dict[str, int] = {}
    for r in records:
        for rule in {x["rule"] for x in r["reasons"] or []}:
            reasons[rule] = reasons.get(rule, 0) + 1
    ledger.start_run(run_id, route, f"lienthong__{route}", run_id, None)
    ledger.settle(run_id, records, SUCCESS if counts[PENDING] == 0 else FAILED, None,
                  {"pulled": len(records), **counts}, reasons, seal=platform_sealer(keys))


def _fill_ledger(s: Settings) -> Ledger:
    """Two runs of one route (a dossier pending in the first, acknowledged in the second), and a
    third whose record row is then deleted behind the ledger's back; a run of another route whose
    record is then altered, and a later run of that route whose run row is deleted."""
    init_keys(s.keys_dir)
    ledger = Ledger(s.state_db_url)
    bad_id = {"field": "MaDoiTuong", "rule": "personal_id_matches_birth_date",
              "message": f"personal ID {PERSONAL_ID} does not match the birth year 1985"}
    _settle(ledger, FIRST_RUN, ROUTE, [
        _outcome("H40.01-261120-0001", ACKNOWLEDGED, ack=(0, "stored")),
        _outcome("H40.01-261120-0002", QUARANTINED, reasons=[bad_id]),
        _outcome("H40.01-261120-0003", PENDING),
    ], s.keys_dir)
    portal_refused = {"field": "MaHoSo", "rule": "portal_rejected_invalid_procedure",
                      "message": "portal refused the record (code 12): unknown procedure 9.999999"}
    _settle(ledger, SECOND_RUN, ROUTE, [
        _outcome("H40.01-261120-0003", ACKNOWLEDGED, ack=(0, "stored")),
        _outcome("H40.01-261121-0004", QUARANTINED, reasons=[portal_refused], ack=(12, "invalid_procedure")),
    ], s.keys_dir)
    _settle(ledger, SHORT_RUN, ROUTE, [
        _outcome("H40.01-261122-0008", ACKNOWLEDGED, ack=(0, "stored")),
        _outcome("H40.01-261122-0009", ACKNOWLEDGED, ack=(0, "stored")),
    ], s.keys_dir)
    _settle(ledger, TAMPERED_RUN, OTHER_ROUTE, [
        _outcome("H40.01-261121-0005", ACKNOWLEDGED, ack=(0, "stored")),
        _outcome("H40.01-261121-0006", ACKNOWLEDGED, ack=(0, "stored")),
    ], s.keys_dir)
    _settle(ledger, DELETED_RUN, OTHER_ROUTE, [_outcome("H40.01-261121-0007", ACKNOWLEDGED, ack=(0, "stored"))],
            s.keys_dir)
    with ledger.engine.begin() as conn:
        conn.execute(update(outcomes).where(outcomes.c.record_key == "H40.01-261121-0006")
                     .values(ack_status="duplicate"))
        conn.execute(delete(runs).where(runs.c.run_id == DELETED_RUN))
        conn.execute(delete(outcomes).where(outcomes.c.record_key == "H40.01-261122-0009"))
    return ledger


@pytest.fixture
def tsa(home: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The sandbox's time-stamping authority over HTTP, offered as the connection sealing uses."""
    with ServerThread(sandbox_tsa.create_app(home.sandbox_dir)) as server:
        monkeypatch.setenv(f"AIRFLOW_CONN_{connection.TSA.upper()}", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": server.port, "schema": "http",
            "extra": {"path": sandbox_tsa.PATH,
                      "ca_file": str(sandbox_tsa.TsaFiles.in_dir(home.sandbox_dir / "tsa").ca_cert)},
        }))
        yield server.url


@pytest.fixture
def api_server(home: Settings, tsa: str) -> Iterator[str]:
    """A real Airflow API server on a free port, with the project's airflow.cfg and plugins folder
    (and the TSA connection, whose CA the page's verification checks the time stamps against)."""
    env = environment(home)
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
    log_file = home.logs_dir / "api-server.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    ensure_metadata_db(home, env, log_file)
    port = free_port()
    with open(log_file, "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1",
                                   "--port", str(port), "--workers", "1"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log_file.read_text()[-3000:]
            try:
                if requests.get(f"{base}/api/v2/monitor/health", timeout=2).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
                pass
            assert time.monotonic() < deadline, "the API server did not answer in 120 s"
            time.sleep(1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def browse(url: str, profile: Path, wait_ms: int = 3000) -> str:
    """The DOM Chromium builds for ``url``, as an auditor's browser would see it, after the page's
    scripts ran for ``wait_ms`` of virtual time (Airflow's UI is a React app)."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: run scripts/setup-browser.sh"
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def text_of(dom: str) -> str:
    """The page's text as read: tags out, runs of white space as one, none before punctuation."""
    return re.sub(r" ([:,.)])", r"\1", re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def assert_no_personal_id(dom: str) -> None:
    """No personal ID in the page: the quoted one is masked; no other 12-digit number outside hashes."""
    assert PERSONAL_ID not in dom
    assert not TWELVE_DIGITS.findall(HEX_RUN.sub(" ", dom))


def test_auditor_page_in_airflow(home: Settings, api_server: str, tmp_path: Path) -> None:
    _fill_ledger(home)
    profile = tmp_path / "chromium"
    page = f"{api_server}/lienthong-audit/"

    # Airflow lists the plugin, with its app and its entry in the UI's navigation.
    plugins = requests.get(f"{api_server}/api/v2/plugins", timeout=30).json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "lienthong_audit")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/lienthong-audit"
    assert ours["external_views"][0]["href"] == "lienthong-audit/"

    # Airflow's own UI lists the page in its navigation and shows it in an iframe.
    ui = browse(f"{api_server}/plugin/lienthong-audit", profile, wait_ms=15000)
    assert re.search(r'<a [^>]*aria-label="Sync audit"[^>]*href="/plugin/lienthong-audit"', ui)
    assert re.search(r'<iframe [^>]*src="lienthong-audit/"', ui)

    # The page is behind Airflow's authentication: a bad token is refused before any ledger read.
    refused = requests.get(page, headers={"Authorization": "Bearer forged"}, timeout=30)
    assert refused.status_code == 403 and "stp_h40" not in refused.text

    # Index: runs per route with their counts and verification status.
    dom = index = browse(page, profile)
    assert_no_personal_id(dom)
    routes = re.findall(r'data-route="([^"]+)"', dom)
    assert routes == [ROUTE, OTHER_ROUTE]
    first = re.search(r'<tr class="run" data-run-id="' + re.escape(FIRST_RUN) + r'">(.*?)</tr>', dom, re.S).group(1)
    assert re.findall(r'data-count="(\w+)">(\d+)<', first) == [
        ("pulled", "3"), ("acknowledged", "1"), ("quarantined", "1"), ("pending", "1")]
    # The index counts each run's records against its signed tree, and says that a run's page
    # recomputes each: a deleted record row shows here, a changed one only on its run's page.
    verdicts = dict(re.findall(r'data-run-id="([^"]+)">.*?data-verdict="(\w+)"', dom, re.S))
    assert verdicts == {FIRST_RUN: "ok", SECOND_RUN: "ok", SHORT_RUN: "bad", TAMPERED_RUN: "ok"}
    short = re.search(r'<tr class="run" data-run-id="' + re.escape(SHORT_RUN) + r'">(.*?)</tr>', dom, re.S).group(1)
    assert "record_removed" in short and "1 of the signed tree's 2 records are not stored" in text_of(short)
    assert "record_changed" not in dom
    assert "A run's own page recomputes every record's hash up to the signed Merkle root" in text_of(dom)
    removed = re.search(r'<div class="unattached">(.*?)</div>', dom, re.S).group(1)
    assert DELETED_RUN in removed and "run_removed" in removed

    # Drill-down: the run's manifest and its quarantined records with their reasons, masked.
    dom = browse(f"{page}run?id={quote(FIRST_RUN, safe='')}", profile)
    assert_no_personal_id(dom)
    text = text_of(dom)
    assert "Signature (CMS, detached) valid, by the platform key" in text
    assert "Time stamp valid (RFC 3161)" in text
    assert "none (first run of the route)" in text
    reason = re.search(r'<li class="reason">(.*?)</li>', dom, re.S).group(1)
    assert "personal_id_matches_birth_date" in reason and "MaDoiTuong" in reason
    assert "personal ID 079******234 does not match the birth year 1985" in reason
    assert 'data-record-key="H40.01-261120-0002"' in dom
    dom = browse(f"{page}run?id={quote(SECOND_RUN, safe='')}", profile)
    assert "portal refused the record (code 12): unknown procedure 9.999999" in text_of(dom)
    assert "none (first run" not in text_of(dom)  # the second run chains to the first
    dom = browse(f"{page}run?id={quote(TAMPERED_RUN, safe='')}", profile)
    assert re.search(r'data-verdict="bad"', dom)
    assert "record_changed" in dom and "H40.01-261121-0006" in dom

    # Trace: the dossier's journey across both runs, each step proven part of its run.
    dom = browse(f"{page}trace?code=H40.01-261120-0003", profile)
    assert_no_personal_id(dom)
    steps = re.findall(r'class="step" data-run-id="([^"]+)".*?class="outcome">(\w+)<', dom, re.S)
    assert steps == [(FIRST_RUN, PENDING), (SECOND_RUN, ACKNOWLEDGED)]
    assert text_of(dom).count("proven: leaf") == 2
    assert "No run met this dossier" in browse(f"{page}trace?code=H40.99-000000-0000", profile)

    # Export: the bundle of a run, as a zip, without the personal ID either.
    export_link = re.search(r'href="(export\?id=[^"]+)"', index).group(1)
    answer = requests.get(page + export_link, timeout=60)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as bundle:
        names = bundle.namelist()
        assert any(n.endswith("manifest.json") for n in names) and any(n.endswith("README.md") for n in names)
        assert not any(PERSONAL_ID.encode() in bundle.read(n) for n in names)


def test_a_run_longer_than_the_page_lists_its_first_records_in_leaf_order(
        home: Settings, state_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, so that the page can be made two records long instead of seeding thousands."""
    monkeypatch.setenv("LIENTHONG_STATE_DB", state_db_url)
    init_keys(home.keys_dir)
    ledger = Ledger(state_db_url)
    bad_id = {"field": "MaDoiTuong", "rule": "personal_id_matches_birth_date",
              "message": f"personal ID {PERSONAL_ID} does not match the birth year 1985"}
    codes = [f"H40.01-261201-{i:04d}" for i in range(7)]
    _settle(ledger, FIRST_RUN, ROUTE, [
        _outcome(code, QUARANTINED, reasons=[bad_id]) if i in (1, 3, 4, 6)
        else _outcome(code, ACKNOWLEDGED, ack=(0, "stored"))
        for i, code in enumerate(codes)], home.keys_dir)
    client = TestClient(web.create_app(lambda: Ledger(state_db_url)))

    monkeypatch.setattr(web, "MAX_RECORD_ROWS", 2)
    dom = client.get("/run", params={"id": FIRST_RUN}).text
    assert_no_personal_id(dom)
    listed = re.search(r'<table class="outcomes">(.*?)</table>', dom, re.S).group(1)
    assert re.findall(r'<td class="n">(\d+)</td>', listed) == ["0", "1"]
    assert re.findall(r'data-record-key="([^"]+)"', dom) == [codes[1], codes[3]]
    text = text_of(dom)
    assert "Quarantined records (4)" in text and "Every record (7)" in text
    assert text.count("The first 2 are shown; the export holds them all.") == 2

    monkeypatch.setattr(web, "MAX_RECORD_ROWS", 7)  # the whole run fits: listed whole, no note
    dom = client.get("/run", params={"id": FIRST_RUN}).text
    listed = re.search(r'<table class="outcomes">(.*?)</table>', dom, re.S).group(1)
    assert re.findall(r'<td class="n">(\d+)</td>', listed) == [str(i) for i in range(7)]
    assert re.findall(r'data-record-key="([^"]+)"', dom) == [codes[i] for i in (1, 3, 4, 6)]
    assert "are shown" not in dom
