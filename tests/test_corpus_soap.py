"""Hostile SOAP answers and service descriptions (tests/corpus/soap.yaml) from a real HTTP server,
to the real client: refused with a clear reason, no entity expanded, no local file read, and the
other citizens of the same run verified all the same."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import logging
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest
import requests

from lienthong.connectors.soap import PopulationVerifier, Subject
from lienthong.sandbox.http import ServerThread
from lienthong.sandbox.population import Citizen, PopulationRegistry, create_app
from tests.corpus import load, params

CORPUS = load("soap")
LIMIT = 1024 * 1024
GOOD = [Citizen("001090000001", "Nguyễn Văn An", dt.date(1990, 1, 2), "M"),
        Citizen("001195000003", "Lê Thị Cúc", dt.date(1995, 3, 4), "F"),
        Citizen("079090000004", "Phạm Văn Dũng", dt.date(1990, 7, 8), "M")]
HOSTILE = Citizen("079195000002", "Trần Thị Bình", dt.date(1995, 5, 6), "F")  # its batch gets the case
CANARY = """<?xml version="1.0"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:canary">
  <xs:element name="CANARY" type="xs:string"/>
</xs:schema>
"""


def subject(c: Citizen) -> Subject:
    return Subject(c.personal_id, c.full_name, c.date_of_birth, c.gender)


class HostileService:
    """The real population sandbox, except for what the current case says to serve instead."""

    def __init__(self, real: Callable[..., Iterable[bytes]]) -> None:
        self.real = real
        self.case: dict[str, Any] | None = None
        self.answer = b""
        self.wsdl = b""
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        with self.lock:
            self.requests.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
        case = self.case
        if case is None:
            return self.real(environ, start_response)
        if case["serve"] == "wsdl" and environ["REQUEST_METHOD"] == "GET" and "wsdl" in environ["QUERY_STRING"]:
            return self._send(self.wsdl, case, start_response)
        if case["serve"] == "answer" and environ["REQUEST_METHOD"] == "POST" and HOSTILE.personal_id.encode() in body:
            return self._send(self.answer, case, start_response)
        return self.real(environ, start_response)

    @staticmethod
    def _send(data: bytes, case: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = [("Content-Type", "text/xml; charset=utf-8")]
        if case.get("gzip"):
            data = gzip.compress(data, 1)
            headers.append(("Content-Encoding", "gzip"))
        if case.get("chunked"):
            start_response("200 OK", headers)
            return (data[i:i + 65536] for i in range(0, len(data), 65536))
        start_response("200 OK", [*headers, ("Content-Length", str(len(data)))])
        return [data]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostileService, ServerThread, Path]]:
    folder = tmp_path_factory.mktemp("population")
    registry = PopulationRegistry(folder / "population.db")
    registry.add_citizens([*GOOD, HOSTILE])
    registry.close()
    canary = folder / "canary.xsd"
    canary.write_text(CANARY, encoding="utf-8")
    hostile = HostileService(create_app(folder / "population.db"))
    with ServerThread(hostile) as server:
        yield hostile, server, canary


def render(text: str, case: dict[str, Any], server: ServerThread, canary: Path) -> bytes:
    fill = case.get("fill")
    values = {"result": CORPUS["result"], "passwd": "file:///etc/passwd", "canary": canary.as_uri(),
              "canary_path": str(canary), "base": server.url,
              "fill": fill["text"] * fill["times"] if fill else ""}
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text.encode("utf-8")


def real_wsdl(server: ServerThread) -> str:
    return requests.get(f"{server.url}/population?wsdl", timeout=10).text


def verifier(server: ServerThread) -> PopulationVerifier:
    """One citizen per call, so that the hostile answer reaches its own batch only."""
    return PopulationVerifier(f"{server.url}/population?wsdl", batch_size=1, concurrency=2, max_attempts=1,
                              max_answer_bytes=LIMIT)


@pytest.mark.parametrize("case", params(CORPUS))
def test_a_hostile_answer_is_refused_and_the_rest_verified(
        service: tuple[HostileService, ServerThread, Path], case: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    hostile, server, canary = service
    hostile.case = None
    if case["serve"] == "wsdl":
        text = real_wsdl(server)
        for old, new in case["wsdl_replace"]:
            assert old in text, old
            text = text.replace(old, render(new, case, server, canary).decode("utf-8"), 1)
        hostile.wsdl = render(text, case, server, canary)
    else:
        hostile.answer = render(case["body"], case, server, canary)
    hostile.case = case
    caplog.set_level(logging.DEBUG)
    try:
        results = verifier(server).verify([subject(c) for c in [GOOD[0], HOSTILE, GOOD[1]]])
    finally:
        hostile.case = None
    refused = results[1]
    assert refused.status == case.get("status", "unavailable"), refused
    assert re.search(case["error"], refused.detail), refused.detail
    if case["serve"] == "answer":  # the other citizens of the run are verified as ever
        assert [results[0].status, results[2].status] == ["match", "match"]
    else:  # no usable description: everyone waits for the next run, nobody passes unverified
        assert {r.status for r in results} == {"unavailable"}
    said = " ".join(r.detail for r in results) + caplog.text
    assert "root:x:0:0" not in said and "CANARY" not in said
    if case.get("never"):
        assert case["never"] not in said
    assert not any(r.endswith(("/secret", "/evil.dtd")) for r in hostile.requests)


def test_a_hostile_batch_does_not_hold_up_the_others(service: tuple[HostileService, ServerThread, Path]) -> None:
    hostile, server, canary = service
    [bomb] = [c for c in CORPUS["cases"] if c["id"] == "billion_laughs"]
    hostile.answer, hostile.case = render(bomb["body"], bomb, server, canary), bomb
    try:
        results = verifier(server).verify([subject(c) for c in [*GOOD, HOSTILE]])
    finally:
        hostile.case = None
    assert [r.status for r in results] == ["match", "match", "match", "unavailable"]
