"""``lienthong connectors ...`` as a user runs it (a real process), against the sandbox's dossier
systems over real ODBC, SOAP and REST."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pyodbc
import pytest

from lienthong.registry.store import Registry
from lienthong.sandbox import services
from lienthong.settings import PROJECT_ROOT, Settings
from lienthong.signing.keys import init_keys
from tests.conftest import sqlite_connection_string

pytestmark = pytest.mark.slow
EXAMPLES = PROJECT_ROOT / "lienthong" / "registry" / "examples"
LIENTHONG = str(PROJECT_ROOT / ".venv" / "bin" / "lienthong")
MANIFESTS = {"odbc": ("so-tu-phap.yaml", "so-tu-phap-nghe-an"), "soap": ("huyen-soap.yaml", "ubnd-huyen-quynh-luu"),
             "rest": ("xa-rest.yaml", "ubnd-xa-nghi-loc")}


@pytest.fixture(scope="module")
def systems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Keys and the three seeded dossier systems (SOAP and REST served as processes); the
    environment a user's shell would have, minus the state database, which each test owns."""
    home = tmp_path_factory.mktemp("cli-home")
    env = {**os.environ, "LIENTHONG_HOME": str(home)}
    s = Settings(home=home, state_db_url="unused")
    init_keys(s.keys_dir)
    s.sandbox_dir.mkdir(parents=True)
    for system in MANIFESTS:
        services.seed_system(s, system, 30)
    with services.Sandbox(s, {"dossier_soap": 0, "dossier_rest": 0}).start() as sandbox:
        conns = {**sandbox.dossier_system_connections(), "lienthong_dossier_db": services.dossier_db_connection(s)}
        env.update({f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in conns.items()})
        yield env


@pytest.fixture
def env(systems: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**systems, "LIENTHONG_STATE_DB": f"sqlite:///{tmp_path / 'state.db'}"}


def lienthong(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    done = subprocess.run([LIENTHONG, "connectors", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in done.stderr + done.stdout
    return done


def test_register_check_approve_disable_and_list_over_each_protocol(env: dict[str, str]) -> None:
    for file, connector_id in MANIFESTS.values():
        registered = lienthong(env, "register", EXAMPLES / file, "--by", "agency-integrator")
        assert registered.returncode == 0, registered.stderr
        assert f"registered {connector_id} version 1" in registered.stdout
    again = lienthong(env, "register", EXAMPLES / "xa-rest.yaml")
    assert "ubnd-xa-nghi-loc unchanged: version 1" in again.stdout

    seen = {"odbc": ["table dossiers: 17 columns", "table dossier_documents:"],
            "soap": ["operations: DanhSachHoSoTheoThoiGian", "child TaiLieu: DaSoHoa, MaBam, TenTep"],
            "rest": ["GET /api/v1/dossiers: 30 records looked at", "applicant.personal_id"]}
    for protocol, (_, connector_id) in MANIFESTS.items():
        checked = lienthong(env, "check", connector_id)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for text in seen[protocol]:
            assert text in checked.stdout, (protocol, checked.stdout)
        assert "everything the manifest and mapping name is offered" in checked.stdout

    approved = lienthong(env, "approve", "so-tu-phap-nghe-an", "--by", "engineer-an")
    assert approved.returncode == 0
    assert "its DAGs: stp_h40__dossiers, stp_h40__status" in approved.stdout
    assert lienthong(env, "approve", "ubnd-huyen-quynh-luu", "--by", "engineer-an").returncode == 0
    assert lienthong(env, "disable", "ubnd-huyen-quynh-luu").returncode == 0

    listed = {c["id"]: c for c in json.loads(lienthong(env, "list", "--json").stdout)}
    assert {i: (c["status"], c["version"]) for i, c in listed.items()} == {
        "so-tu-phap-nghe-an": ("approved", 1), "ubnd-huyen-quynh-luu": ("disabled", 1),
        "ubnd-xa-nghi-loc": ("registered", None)}
    table = lienthong(env, "list")
    assert table.returncode == 0 and "so-tu-phap-nghe-an" in table.stdout and "awaiting approval" in table.stdout

    events = Registry(env["LIENTHONG_STATE_DB"]).events("ubnd-huyen-quynh-luu")
    assert [(e["action"], e["actor"]) for e in events] == [
        ("register", "agency-integrator"), ("approve", "engineer-an"), ("disable", getpass.getuser())]


def test_check_reports_columns_the_live_table_lacks(env: dict[str, str], tmp_path: Path) -> None:
    """The mapping reads dossiers.note; the agency's database no longer has it."""
    database = tmp_path / "dossiers.db"
    shutil.copy(json.loads(env["AIRFLOW_CONN_LIENTHONG_DOSSIER_DB"])["schema"], database)
    with pyodbc.connect(sqlite_connection_string(database), autocommit=True) as conn:
        conn.execute('ALTER TABLE dossiers DROP COLUMN "note"')
    env = {**env, "AIRFLOW_CONN_LIENTHONG_DOSSIER_DB": json.dumps(
        {"conn_type": "odbc", "schema": str(database), "extra": {"driver": "SQLite3"}})}
    assert lienthong(env, "register", EXAMPLES / "so-tu-phap.yaml").returncode == 0
    checked = lienthong(env, "check", "so-tu-phap-nghe-an")
    assert checked.returncode == 1
    assert "missing: field 'note' is not offered" in checked.stdout
    assert "the mapping would read nothing for: GhiChu (from 'note')" in checked.stdout
    assert "stream status" in checked.stdout  # the other stream is still checked


def test_check_reports_an_operation_the_wsdl_lacks(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "district"
    folder.mkdir()
    shutil.copy(EXAMPLES / "huyen_dossier.yaml", folder)
    manifest = folder / "huyen-soap.yaml"
    manifest.write_text((EXAMPLES / "huyen-soap.yaml").read_text(encoding="utf-8")
                        .replace("operation: DanhSachHoSoTheoThoiGian", "operation: LayDanhSachHoSo"), encoding="utf-8")
    assert lienthong(env, "register", manifest).returncode == 0
    checked = lienthong(env, "check", "ubnd-huyen-quynh-luu")
    assert checked.returncode == 1
    assert "operations: DanhSachHoSoTheoThoiGian" in checked.stdout
    assert "operation 'LayDanhSachHoSo' is not offered" in checked.stdout


def test_refusals_are_messages_not_tracebacks(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "so-tu-phap.yaml").read_text(encoding="utf-8")
                   .replace("protocol: odbc", "protocol: ftp")
                   .replace("table: dossiers\n", 'table: "dossiers; DROP TABLE x"\n', 1), encoding="utf-8")
    refused = lienthong(env, "register", bad)
    assert refused.returncode == 1
    assert f"{bad}:12: system.protocol: unknown value 'ftp'" in refused.stderr
    assert f"{bad}:21: streams.0.table: 'dossiers; DROP TABLE x' is not a plain name" in refused.stderr
    assert "2 problem(s); nothing was registered" in refused.stderr
    assert json.loads(lienthong(env, "list", "--json").stdout) == []
    unknown = lienthong(env, "approve", "nope")
    assert unknown.returncode == 1 and "no connector 'nope' is registered" in unknown.stderr
    missing = lienthong(env, "register", tmp_path / "absent.yaml")
    assert missing.returncode == 1 and "absent.yaml:1: (file): cannot be read" in missing.stderr
