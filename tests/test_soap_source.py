"""The SOAP source against the district sandbox system, a real SOAP server in its own process."""

from __future__ import annotations

import json
import os
from typing import Iterator

import pytest
import requests

from lienthong.connectors.connection import DISTRICT_SOAP
from lienthong.connectors.soap_source import SoapSource
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

STREAM, SPEC = example("huyen-soap.yaml")


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    yield from running(tmp_path_factory, "soap")


def test_reads_every_dossier_once_in_order_across_tied_update_times(district: Settings) -> None:
    source = open_source("soap", STREAM, DISTRICT_SOAP)
    assert isinstance(source, SoapSource)
    batches = list(source.read(None, 37))
    assert max(len(b) for b in batches) == 37
    items = [item for batch in batches for item in batch]
    tied = sum(1 for _, row in items if row["NgayCapNhat"] == seed.MIGRATION_AT.isoformat(timespec="microseconds"))
    assert tied > 60  # many records share one update time, so pages break inside the tie
    answer = services.answer_key(district, "soap")
    assert all(code.startswith("HQL-") for code in answer)
    assert_reads_every_dossier_once_in_order(items, STREAM, answer, "MaHoSo")
    row = items[0][1]
    assert set(row) == STREAM.fields() | {"TaiLieu"}
    assert all(set(doc) == {"TenTep", "MaBam", "DaSoHoa"} for _, r in items for doc in r["TaiLieu"])
    missing = [r for _, r in items if answer[r["MaHoSo"]] == "missing_applicant"]
    assert missing and all(r["ChuHoSo.HoTen"] is None for r in missing)  # as a LEFT JOIN gives it


def test_resumes_from_a_saved_cursor_inside_a_tie_with_exactly_the_rest(district: Settings) -> None:
    assert_resumes_inside_a_tie(open_source("soap", STREAM, DISTRICT_SOAP), STREAM)


def test_probe_lists_the_operations_and_the_record_elements(district: Settings) -> None:
    probe = open_source("soap", STREAM, DISTRICT_SOAP).probe()
    assert "DanhSachHoSoTheoThoiGian" in probe.notes[0]
    assert {"Id", "NgayCapNhat", "MaHoSo", "ChuHoSo.SoDinhDanh", "ChuHoSo.HoTen"} <= probe.fields
    assert probe.children == {"TaiLieu": {"TenTep", "MaBam", "DaSoHoa"}}
    assert probe.missing(STREAM) == []
    wrong = STREAM.model_copy(update={"columns": [*STREAM.columns, "SoBienNhan"]})
    assert probe.missing(wrong) == ["field 'SoBienNhan' is not offered"]


def test_the_example_mapping_maps_every_good_dossier(district: Settings) -> None:
    assert SPEC.problems_with(STREAM) == []
    items = pull(open_source("soap", STREAM, DISTRICT_SOAP), None, 200)
    assert_maps_good_dossiers(items, SPEC, services.answer_key(district, "soap"), "MaHoSo")


def test_transient_server_errors_are_retried_and_nothing_is_lost(district: Settings) -> None:
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{DISTRICT_SOAP.upper()}"])
    faults = f"http://{conn['host']}:{conn['port']}/_sandbox/faults"
    source = SoapSource(f"http://{conn['host']}:{conn['port']}/dossiers?wsdl", STREAM, max_attempts=10)
    source.probe()  # the WSDL is loaded before the bad day starts
    requests.put(faults, json={"error_rate": 0.3, "error_status": 503}, timeout=5).raise_for_status()
    try:
        items = pull(source, None, 40)
    finally:
        requests.put(faults, json={}, timeout=5).raise_for_status()
    assert sorted(r["MaHoSo"] for _, r in items) == sorted(services.answer_key(district, "soap"))


def _call_district(body: str, content_type: str = "text/xml; charset=utf-8",
                   action: str = "") -> requests.Response:
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{DISTRICT_SOAP.upper()}"])
    return requests.post(f"http://{conn['host']}:{conn['port']}/dossiers", data=body.encode("utf-8"),
                         headers={"Content-Type": content_type, "SOAPAction": action}, timeout=10)


_LIST = ('<t:DanhSachHoSoTheoThoiGian xmlns:t="urn:lienthong:sandbox:dossier-soap:v1">'
         "<t:SoBanGhi>5</t:SoBanGhi></t:DanhSachHoSoTheoThoiGian>")
_SOAP11 = '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>{}</s:Body></s:Envelope>'
_SOAP12 = '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>{}</s:Body></s:Envelope>'


@pytest.mark.parametrize(("body", "content_type", "action", "status", "reason"), [
    (_SOAP11.format(_LIST), "application/soap+xml", "", 415, "text/xml"),
    ('<!DOCTYPE s:Envelope [<!ENTITY x "x">]>' + _SOAP11.format(_LIST), "text/xml", "", 500, "DTDs"),
    (_SOAP12.format(_LIST), "text/xml", "", 500, "envelope version"),
    (_SOAP11.format("<t:Other xmlns:t='urn:x'/>"), "text/xml", "", 500, "exactly one DanhSachHoSoTheoThoiGian"),
    (_SOAP11.format(_LIST), "text/xml", "urn:x#Other", 500, "SOAP action does not match"),
])
def test_the_district_service_refuses_bad_calls_with_a_soap_11_fault(
        district: Settings, body: str, content_type: str, action: str, status: int, reason: str) -> None:
    """What the population service refuses, this stand-in refuses the same way (one shared
    envelope handling), in SOAP 1.1 only; a good call with no SOAPAction is served."""
    response = _call_district(body, content_type, action)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/xml")
    assert "<faultcode>soap:" in response.text and reason in response.text
    assert _call_district(_SOAP11.format(_LIST)).status_code == 200


def test_a_rate_limit_keeps_the_systems_quota_and_loses_nothing(
        district: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_keeps_the_quota("soap", STREAM, DISTRICT_SOAP, monkeypatch, services.answer_key(district, "soap"), "MaHoSo")
