"""The REST source against the commune sandbox system, a real HTTP server in its own process."""

from __future__ import annotations

import json
import os
from typing import Iterator

import pytest
import requests
import requests.auth

from lienthong.connectors.connection import COMMUNE_REST
from lienthong.connectors.rest_source import RestSource
from lienthong.connectors.sources import open_source
from lienthong.sandbox import seed, services
from lienthong.settings import Settings
from tests.dossier_systems import (
    assert_keeps_the_quota,
    assert_maps_good_dossiers,
    assert_reads_every_dossier_once_in_order,
    assert_resumes_inside_a_tie,
    example,
    pull,
    running,
)

STREAM, SPEC = example("xa-rest.yaml")


@pytest.fixture(scope="module")
def commune(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    yield from running(tmp_path_factory, "rest")


def _connection() -> dict:
    return json.loads(os.environ[f"AIRFLOW_CONN_{COMMUNE_REST.upper()}"])


def test_reads_every_dossier_once_in_order_across_tied_update_times(commune: Settings) -> None:
    source = open_source("rest", STREAM, COMMUNE_REST)
    assert isinstance(source, RestSource)
    batches = list(source.read(None, 37))
    assert max(len(b) for b in batches) == 37
    items = [item for batch in batches for item in batch]
    tied = sum(1 for _, row in items if row["updated_at"] == seed.MIGRATION_AT.isoformat(timespec="microseconds"))
    assert tied > 60
    answer = services.answer_key(commune, "rest")
    assert all(code.startswith("XNL-") for code in answer)
    assert_reads_every_dossier_once_in_order(items, STREAM, answer, "code")
    assert all(cursor.kind == "datetime" for cursor, _ in items)  # saved like an ODBC source's
    assert set(items[0][1]) == STREAM.fields() | {"documents"}
    missing = [r for _, r in items if answer[r["code"]] == "missing_applicant"]
    assert missing and all(r["applicant.full_name"] is None for r in missing)


def test_resumes_from_a_saved_cursor_inside_a_tie_with_exactly_the_rest(commune: Settings) -> None:
    assert_resumes_inside_a_tie(open_source("rest", STREAM, COMMUNE_REST), STREAM)


def test_probe_reports_the_keys_of_the_records(commune: Settings) -> None:
    probe = open_source("rest", STREAM, COMMUNE_REST).probe()
    assert {"id", "updated_at", "code", "applicant.personal_id", "applicant.full_name"} <= probe.fields
    assert probe.children == {"documents": {"file_name", "sha256", "digitised"}}
    assert probe.missing(STREAM) == []


def test_credentials_are_required_and_a_bearer_token_works(commune: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _connection()
    url = f"http://{conn['host']}:{conn['port']}{STREAM.resource}"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, auth=(conn["login"], "wrong"), timeout=5).status_code == 401
    monkeypatch.setenv("AIRFLOW_CONN_COMMUNE_BEARER", json.dumps({**conn, "login": None, "extra": {"auth": "bearer"}}))
    bearer = open_source("rest", STREAM, "commune_bearer")
    assert len(pull(bearer, None, 500)) == len(services.answer_key(commune, "rest"))
    refused = RestSource(f"http://{conn['host']}:{conn['port']}", STREAM, max_attempts=3)
    with pytest.raises(requests.HTTPError, match="401"):  # a refusal is not retried into a lockout
        pull(refused, None, 10)


def test_transient_server_errors_are_retried_and_nothing_is_lost(commune: Settings) -> None:
    conn = _connection()
    faults = f"http://{conn['host']}:{conn['port']}/_sandbox/faults"
    requests.put(faults, json={"error_rate": 0.3, "error_status": 503}, timeout=5).raise_for_status()
    try:
        source = RestSource(f"http://{conn['host']}:{conn['port']}", STREAM,
                            requests.auth.HTTPBasicAuth(conn["login"], conn["password"]), max_attempts=10)
        items = pull(source, None, 40)
    finally:
        requests.put(faults, json={}, timeout=5).raise_for_status()
    assert sorted(r["code"] for _, r in items) == sorted(services.answer_key(commune, "rest"))


def test_the_example_mapping_maps_every_good_dossier(commune: Settings) -> None:
    assert SPEC.problems_with(STREAM) == []
    items = pull(open_source("rest", STREAM, COMMUNE_REST), None, 200)
    assert_maps_good_dossiers(items, SPEC, services.answer_key(commune, "rest"), "code")


def test_a_rate_limit_keeps_the_systems_quota_and_loses_nothing(
        commune: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_keeps_the_quota("rest", STREAM, COMMUNE_REST, monkeypatch, services.answer_key(commune, "rest"), "code")
