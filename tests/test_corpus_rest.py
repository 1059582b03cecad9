"""REST answers that are not JSON, cut short or too large (tests/corpus/rest.yaml), from a real HTTP
server to the real clients, RestSource and PortalSink: refused with an error naming the request,
read no further than the limit; and a record holding bytes that are not UTF-8 is quarantined
alone while the rest of its page goes through."""

from __future__ import annotations

import gzip
import json
import re
from typing import Any, Callable, Iterable, Iterator

import pytest

from lienthong.connectors.answers import BadAnswer
from lienthong.connectors.rest import PortalError, PortalSink
from lienthong.connectors.rest_source import RestSource
from lienthong.mappings.engine import MappingEngine
from lienthong.mappings.spec import load as load_mapping
from lienthong.registry import manifest as mf
from lienthong.sandbox.http import ServerThread
from lienthong.settings import PROJECT_ROOT
from tests.corpus import load, params

CORPUS = load("rest")
LIMIT = 1024 * 1024
EXAMPLES = PROJECT_ROOT / "lienthong" / "registry" / "examples"
LOGIN = b'{"session": "phien-1", "error_code": 0, "message": "logged in"}'


class HostileServer:
    """Answers every request with the current case, except the login when the case is later."""

    def __init__(self) -> None:
        self.case: dict[str, Any] = {}
        self.raw = b""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        case = self.case
        if environ["PATH_INFO"] == "/api/login" and case.get("at", "service") != "login":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [LOGIN]
        data = self.raw
        headers = [("Content-Type", case.get("content_type", "application/json"))]
        if case.get("gzip"):
            data = gzip.compress(data, 1)
            headers.append(("Content-Encoding", "gzip"))
        status = f"{case.get('status', 200)} Answer"
        if case.get("chunked"):
            start_response(status, headers)
            return (data[i:i + 65536] for i in range(0, len(data), 65536))
        start_response(status, [*headers, ("Content-Length", str(len(data)))])
        return [data]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[HostileServer, ServerThread]]:
    hostile = HostileServer()
    with ServerThread(hostile) as running:
        yield hostile, running


def stream() -> Any:
    manifest = mf.read(EXAMPLES / "xa-rest.yaml")
    return manifest.source_stream(manifest.streams[0])


def body(case: dict[str, Any]) -> bytes:
    if "hex" in case:
        return bytes.fromhex(case["hex"])
    fill = case.get("fill")
    return case["body"].replace("{fill}", fill["text"] * fill["times"] if fill else "").encode("utf-8")


@pytest.mark.parametrize("case", params(CORPUS))
def test_a_bad_answer_is_refused_naming_the_request(server: tuple[HostileServer, ServerThread],
                                                    case: dict[str, Any]) -> None:
    hostile, running = server
    hostile.case, hostile.raw = case, body(case)
    if case["client"] == "source":
        source = RestSource(running.url, stream(), max_attempts=1, max_answer_bytes=LIMIT)
        with pytest.raises(BadAnswer) as caught:
            list(source.read(None))
    else:
        sink = PortalSink(running.url, "lgsp", "mat-khau", max_attempts=1, max_answer_bytes=LIMIT)
        with pytest.raises(PortalError) as caught:
            sink.push([{"MaHoSo": "REST-1", "PhienBan": "0" * 64, "ChuKySo": "x..y"}])
    message = str(caught.value)
    assert re.search(case["error"], message), message
    assert len(message) < 300  # the body is never quoted back


def test_a_record_with_bytes_that_are_not_utf8_is_refused_alone(server: tuple[HostileServer, ServerThread]) -> None:
    hostile, running = server
    items = [{"id": n, "updated_at": "2025-01-03T17:00:00", "code": f"XNL-{n}", "status": "MOI_TAO",
              "applicant": {"full_name": "Trần Văn Bình"}} for n in range(3)]
    page = json.dumps({"items": items, "next_cursor": None}, ensure_ascii=False).encode("utf-8")
    page = page.replace("Trần Văn Bình".encode(), b"Tr\xe1\xba V\xff\xfen B\xc3nh", 2)  # cut, stray, Latin-1
    page = page.replace(b"Tr\xe1\xba V\xff\xfen B\xc3nh", "Trần Văn Bình".encode(), 1)  # only the second is bad
    hostile.case, hostile.raw = {}, page
    rows = [row for batch in RestSource(running.url, stream(), max_answer_bytes=LIMIT).read(None) for _, row in batch]
    engine = MappingEngine(load_mapping(EXAMPLES / "xa_dossier.yaml"))
    errors = [engine.map(row).errors for row in rows]
    assert [row["code"] for row in rows] == ["XNL-0", "XNL-1", "XNL-2"]
    assert errors[0] == errors[2] == []
    assert [(e["field"], e["rule"]) for e in errors[1]] == [("ChuHoSo", "invalid_unicode")]
