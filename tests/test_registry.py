"""The connector registry: manifests checked with every problem located, versions, approvals, and
the routes (and DAGs) that approved manifests become."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from lienthong import airflow_env
from lienthong.audit.ledger import FAILED, SUCCESS, Ledger
from lienthong.connectors.sources import PROTOCOLS
from lienthong.mappings.spec import MAPPINGS_DIR, load
from lienthong.registry import manifest as mf
from lienthong.registry.located import Invalid
from lienthong.registry.store import APPROVED, REGISTERED, SUPERSEDED, Registry, RegistryError
from lienthong.routes.route import TARGETS
from lienthong.settings import PROJECT_ROOT, Settings
from lienthong.signing.keys import init_keys

EXAMPLES = PROJECT_ROOT / "lienthong" / "registry" / "examples"
ODBC = "so-tu-phap.yaml"
CONNECTIONS = ("lienthong_dossier_db", "lienthong_district_soap", "lienthong_commune_rest")


@pytest.fixture
def registry(home: Settings, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A private state database, the sandbox keys, and the example connections defined (register
    only looks them up; ``connectors check`` is where they are used, see test_registry_cli)."""
    init_keys(home.keys_dir)
    for conn_id in CONNECTIONS:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "generic", "host": "x"}))
    return Registry(home.state_db_url)


def edited(tmp_path: Path, old: str, new: str, example: str = ODBC) -> Path:
    """A copy of an example manifest with one edit, in a folder of its own."""
    text = (EXAMPLES / example).read_text(encoding="utf-8")
    assert old in text, old
    folder = tmp_path / "submitted"
    folder.mkdir(exist_ok=True)
    path = folder / example
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)


def refusal(registry: Registry, path: Path) -> list[str]:
    with pytest.raises(Invalid) as caught:
        registry.register(path, "agency")
    assert registry.list() == []  # nothing stored
    return str(caught.value).splitlines()


def test_the_examples_register_and_become_routes(registry: Registry) -> None:
    for name in ("so-tu-phap.yaml", "huyen-soap.yaml", "xa-rest.yaml"):
        connector_id, version, changed = registry.register(EXAMPLES / name, "agency")
        assert (version, changed) == (1, True)
        assert registry.approve(connector_id, "engineer") == 1
    routes = {r.name: r for r in registry.approved_routes()}
    assert set(routes) == {"stp_h40__dossiers", "stp_h40__status", "hql_h40__dossiers", "xnl_h40__dossiers"}
    status = routes["stp_h40__status"]
    assert (status.protocol, status.source_conn, status.target) == ("odbc", "lienthong_dossier_db",
                                                                   TARGETS["status_sync"])
    assert (status.schedule, status.retries, status.signing_key) == ("*/5 * * * *", 2, "agency")
    assert status.stream.table == "dossier_history" and status.stream.cursor_field == "id"
    assert status.spec == load(MAPPINGS_DIR / "status.yaml")  # the project's mapping, by fallback
    assert routes["stp_h40__dossiers"].schedule == "*/15 * * * *"  # the manifest's
    soap = routes["hql_h40__dossiers"]
    assert (soap.protocol, soap.stream.operation, soap.agency_code) == ("soap", "DanhSachHoSoTheoThoiGian",
                                                                       "000.30.25.H40")
    assert soap.spec == load(EXAMPLES / "huyen_dossier.yaml")  # next to the manifest
    assert registry.route("xnl_h40__dossiers").stream.resource == "/api/v1/dossiers"


# (edit of the ODBC example, the line it is reported on, what the message says)
BAD = {
    "unknown protocol": (("protocol: odbc", "protocol: ftp"), "protocol: ftp",
                         "system.protocol: unknown value 'ftp': expected 'odbc', 'soap' or 'rest'"),
    "missing cursor field": (("    cursor_field: updated_at\n", ""), "- name: dossiers",
                             "streams.0.cursor_field: required, but missing"),
    "unknown connection": (("connection_id: lienthong_dossier_db", "connection_id: nowhere_db"),
                           "connection_id: nowhere_db", "system.connection_id: no Airflow connection 'nowhere_db'"),
    "mapping names a missing column": (("received_at, appointment_at,", "received_at,"), "mapping: dossier.yaml",
                                       "streams.0.mapping: dossier.yaml: field NgayHenTra: column 'appointment_at' "
                                       "is not in stream 'dossiers'"),
    "SQL where a name is expected": (("table: dossiers\n", 'table: "dossiers; DROP TABLE x"\n'), "DROP TABLE",
                                     "streams.0.table: 'dossiers; DROP TABLE x' is not a plain name"),
    "SQL in a column": (("columns: [code,", "columns: [\"code FROM x --\","), "code FROM x",
                        "streams.0.columns.0: 'code FROM x --' is not a field name"),
    "agency code": (("code: 000.00.12.H40", "code: H40-12"), "code: H40-12",
                    "agency.code: 'H40-12' is not a QCVN 102 agency code"),
    "cron": (('schedule: "*/15 * * * *"', 'schedule: "every 15 minutes"'), "every 15 minutes",
             "schedule: 'every 15 minutes' is not a cron schedule"),
    "unknown target": (("target: dossier_sync", "target: tax_sync"), "target: tax_sync",
                       "streams.0.target: unknown value 'tax_sync'"),
    "signing key": (("signing_key: agency", "signing_key: treasury"), "signing_key: treasury",
                    "signing_key: signing key 'treasury' is not in"),
    "mapping file": (("mapping: dossier.yaml", "mapping: nowhere.yaml"), "mapping: nowhere.yaml",
                     "streams.0.mapping: no mapping file 'nowhere.yaml'"),
    "odbc child": (("        foreign_key: dossier_id\n", ""), "      documents:",
                   "streams.0.children.documents: an odbc child needs 'foreign_key'"),
    "misspelt field": (("page_size: 500", "pagesize: 500"), "pagesize: 500",
                       "streams.0.pagesize: unknown field"),
    "duplicate key": (("retries: 2\n", "retries: 2\nretries: 3\n"), "retries: 3", "retries: duplicate key"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_manifest_is_refused_naming_line_and_field(registry: Registry, tmp_path: Path, case: str) -> None:
    (old, new), needle, message = BAD[case]
    path = edited(tmp_path, old, new)
    expected = f"{path}:{line_of(path, needle)}: {message}"
    assert any(line.startswith(expected) for line in refusal(registry, path)), expected


def test_a_signing_key_in_a_token_is_accepted_by_its_connection(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = edited(tmp_path, "signing_key: agency", "signing_key: treasury-hsm")
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_KEY_TREASURY_HSM", json.dumps({"conn_type": "pkcs11"}))
    connector_id, _, _ = registry.register(path, "agency")
    registry.approve(connector_id, "engineer")
    assert {r.signing_key for r in registry.approved_routes()} == {"treasury-hsm"}


def test_every_problem_is_reported_at_once(registry: Registry, tmp_path: Path) -> None:
    path = edited(tmp_path, "protocol: odbc", "protocol: ftp")
    text = path.read_text(encoding="utf-8").replace("    cursor_field: updated_at\n", "", 1)
    path.write_text(text.replace("table: dossier_history", 'table: "x; DROP TABLE y"'), encoding="utf-8")
    problems = refusal(registry, path)
    assert [p.split(": ")[1] for p in problems] == ["system.protocol", "streams.0.cursor_field", "streams.1.table"]


def test_protocol_rules(registry: Registry, tmp_path: Path) -> None:
    soap = "huyen-soap.yaml"
    path = edited(tmp_path, "    operation: DanhSachHoSoTheoThoiGian\n", "    table: dossiers\n", soap)
    problems = refusal(registry, path)
    stream_line = line_of(path, "- name: dossiers")
    assert f"{path}:{stream_line}: streams.0: a soap stream needs 'operation'" in problems
    assert f"{path}:{line_of(path, 'table: dossiers')}: streams.0.table: not used by soap (it reads 'operation')" \
        in problems
    rest = edited(tmp_path, "    children:\n", "    joins: [{table: a, alias: a, local_key: a, remote_key: "
                  "id, columns: [x]}]\n    children:\n", "xa-rest.yaml")
    assert any("streams.0.joins: joins are for odbc tables" in p for p in refusal(registry, rest))


def test_a_mapping_problem_is_located_in_the_mapping_file(registry: Registry, tmp_path: Path) -> None:
    path = edited(tmp_path, "mapping: dossier.yaml", "mapping: mine.yaml")
    mapping = path.parent / "mine.yaml"
    mapping.write_text((MAPPINGS_DIR / "dossier.yaml").read_text(encoding="utf-8")
                       .replace("transform: datetime", "transform: epoch", 1), encoding="utf-8")
    problems = refusal(registry, path)
    line = line_of(mapping, "transform: epoch")
    assert any(p.startswith(f"{mapping}:{line}: fields.") and "unknown value 'epoch'" in p for p in problems)


def test_versions(registry: Registry, tmp_path: Path) -> None:
    path = edited(tmp_path, "page_size: 500", "page_size: 500")
    connector_id, version, changed = registry.register(path, "agency")
    assert (version, changed) == (1, True)
    assert registry.approved_routes() == []  # registered is not approved
    registry.approve(connector_id, "engineer")
    assert registry.register(path, "agency") == (connector_id, 1, False)
    path.write_text("# a comment only\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert registry.register(path, "agency") == (connector_id, 1, False)

    # A change is a new version that waits for approval; the approved one keeps running meanwhile.
    path.write_text(path.read_text(encoding="utf-8").replace("page_size: 500", "page_size: 250"), encoding="utf-8")
    assert registry.register(path, "agency") == (connector_id, 2, True)
    assert registry.route("stp_h40__dossiers").stream.page_size == 500
    assert registry.route("stp_h40__dossiers").connector_version == 1
    assert registry.version(connector_id).version == 2  # what `check` looks at: the one to approve
    [listed] = registry.list()
    assert (listed["status"], listed["version"], listed["latest_version"], listed["awaiting_approval"]) == \
        (APPROVED, 1, 2, True)
    registry.approve(connector_id, "engineer")
    assert registry.route("stp_h40__dossiers").stream.page_size == 250
    assert [registry.version(connector_id, v).status for v in (1, 2)] == [SUPERSEDED, APPROVED]

    # A change of the mapping alone is a change of the connector too.
    mapping = path.parent / "dossier.yaml"
    mapping.write_text((MAPPINGS_DIR / "dossier.yaml").read_text(encoding="utf-8")
                       .replace("version: 1", "version: 2", 1),
                       encoding="utf-8")
    assert registry.register(path, "agency") == (connector_id, 3, True)
    assert registry.version(connector_id).status == REGISTERED
    assert registry.route("stp_h40__dossiers").spec.version == 1


def test_approve_and_disable_are_recorded_with_who_and_when(registry: Registry) -> None:
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=1)
    connector_id, _, _ = registry.register(EXAMPLES / ODBC, "an-agency")
    with pytest.raises(KeyError, match="stp_h40__dossiers"):
        registry.route("stp_h40__dossiers")
    registry.approve(connector_id, "an-engineer")
    assert registry.approve(connector_id, "someone-else") == 1  # already live: nothing recorded
    assert registry.route("stp_h40__dossiers").connector_id == connector_id
    registry.disable(connector_id, "an-operator")
    assert registry.approved_routes() == []
    with pytest.raises(KeyError, match="no route 'stp_h40__status'"):
        registry.route("stp_h40__status")
    events = registry.events(connector_id)
    assert [(e["action"], e["actor"], e["version"]) for e in events] == [
        ("register", "an-agency", 1), ("approve", "an-engineer", 1), ("disable", "an-operator", 1)]
    assert all(e["at"].replace(tzinfo=None) >= before for e in events)
    registry.approve(connector_id, "an-engineer")  # enabled again
    assert {r.name for r in registry.approved_routes()} == {"stp_h40__dossiers", "stp_h40__status"}


def test_refusals_of_the_registry(registry: Registry, tmp_path: Path) -> None:
    registry.register(EXAMPLES / ODBC, "agency")
    other = edited(tmp_path, "id: so-tu-phap-nghe-an", "id: so-tu-phap-khac")
    with pytest.raises(RegistryError, match="slug 'stp_h40' already belongs to connector 'so-tu-phap-nghe-an'"):
        registry.register(other, "agency")
    renamed = edited(tmp_path, "slug: stp_h40", "slug: stp2_h40")
    with pytest.raises(RegistryError, match="cannot change"):
        registry.register(renamed, "agency")
    with pytest.raises(RegistryError, match="no connector 'nope'"):
        registry.approve("nope", "engineer")
    with pytest.raises(RegistryError, match="no version 7"):
        registry.approve("so-tu-phap-nghe-an", "engineer", 7)


def test_list_shows_last_run_and_last_error_from_the_ledger(registry: Registry) -> None:
    connector_id, _, _ = registry.register(EXAMPLES / ODBC, "agency")
    registry.approve(connector_id, "engineer")
    ledger = Ledger(registry.engine.url.render_as_string(hide_password=False))
    for run_id, route, status in (("r1", "stp_h40__dossiers", FAILED), ("r2", "stp_h40__status", SUCCESS)):
        ledger.start_run(run_id, route, route, None, None)
        ledger.settle(run_id, [], status, None, {"pulled": 3, "pending": 3 if status == FAILED else 0}, {})
    [listed] = registry.list()
    assert (listed["last_run"]["route"], listed["last_run"]["status"]) == ("stp_h40__status", SUCCESS)
    assert (listed["last_error"]["route"], listed["last_error"]["pending"]) == ("stp_h40__dossiers", 3)


def test_the_json_schema_is_the_models_and_agrees_with_it() -> None:
    assert json.loads(mf.SCHEMA_FILE.read_text(encoding="utf-8")) == mf.json_schema(), \
        "regenerate it: python -m lienthong.registry.manifest --schema"
    assert tuple(mf.WHERE) == PROTOCOLS
    assert set(TARGETS) == set(mf.ManifestStream.model_fields["target"].annotation.__args__)
    schema = mf.json_schema()
    for name in ("so-tu-phap.yaml", "huyen-soap.yaml", "xa-rest.yaml"):
        jsonschema.validate(yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8")), schema)
    soap = yaml.safe_load((EXAMPLES / "huyen-soap.yaml").read_text(encoding="utf-8"))
    soap["streams"][0]["table"] = "dossiers"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(soap, schema)


def _dagbag(s: Settings) -> dict:
    """The DAG folder parsed by Airflow in its own process, as the DAG processor does."""
    code = ("import json; from airflow.dag_processing.dagbag import DagBag; "
            "from airflow.configuration import conf; bag = DagBag(dag_folder=conf.get('core', 'dags_folder')); "
            "print(json.dumps({'errors': bag.import_errors, 'dags': {i: {'schedule': str(d.schedule), "
            "'retries': d.default_args.get('retries'), 'tasks': len(d.tasks)} for i, d in bag.dags.items()}}))")
    env = airflow_env.environment(s)
    env.pop("LIENTHONG_TASK_RETRIES", None)
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_dag_folder_holds_one_dag_per_approved_stream(registry: Registry, home: Settings, tmp_path: Path) -> None:
    for name in ("so-tu-phap.yaml", "huyen-soap.yaml"):
        registry.approve(registry.register(EXAMPLES / name, "agency")[0], "engineer")
    registry.register(EXAMPLES / "xa-rest.yaml", "agency")  # registered, never approved
    disabled = edited(tmp_path, "slug: stp_h40", "slug: off_h40")
    disabled.write_text(disabled.read_text(encoding="utf-8").replace("id: so-tu-phap-nghe-an", "id: tat"),
                        encoding="utf-8")
    registry.approve(registry.register(disabled, "agency")[0], "engineer")
    registry.disable("tat", "operator")

    bag = _dagbag(home)
    assert bag["errors"] == {}
    assert set(bag["dags"]) == {"stp_h40__dossiers", "stp_h40__status", "hql_h40__dossiers"}
    assert bag["dags"]["stp_h40__status"]["schedule"] == "*/5 * * * *"
    assert bag["dags"]["hql_h40__dossiers"] == {"schedule": "*/15 * * * *", "retries": 2, "tasks": 9}


@pytest.mark.slow
def test_a_registry_that_cannot_be_read_is_an_import_error(home: Settings, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("LIENTHONG_STATE_DB", f"sqlite:///{blocked}/state.db")
    bag = _dagbag(Settings.from_env())
    assert bag["dags"] == {}
    [(file, error)] = bag["errors"].items()
    assert file.endswith("connectors.py") and "unable to open database file" in error
