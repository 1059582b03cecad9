"""Malformed source rows (tests/corpus/rows.yaml), all in one batch with good ones, through the
real path: a REST server, RestSource, staging, the mapping engine, the gate. Every bad row ends
quarantined with a reason naming its field; the good rows of the same batch pass."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator

import pytest

from lienthong.audit.ledger import QUARANTINED
from lienthong.connectors.rest_source import RestSource
from lienthong.gates import gate
from lienthong.gates.personal_id import make_personal_id
from lienthong.mappings.engine import MappingEngine
from lienthong.mappings.spec import load as load_mapping
from lienthong.registry import manifest as mf
from lienthong.routes.stages import _mapped, _outcome
from lienthong.sandbox.http import ServerThread
from lienthong.settings import PROJECT_ROOT
from lienthong.signing.canonical import content_hash
from lienthong.staging import RunStaging
from tests.corpus import load, params, repeated

CORPUS = load("rows")
EXAMPLES = PROJECT_ROOT / "lienthong" / "registry" / "examples"
SUITE = "dossier_gate.suite.json"
PID = make_personal_id("001", 1990, "F", 12345)
GOOD_COUNT = 5


def good_item(n: int) -> dict[str, Any]:
    """A dossier as the commune system's REST resource nests it."""
    return {
        "id": f"good-{n}", "updated_at": "2025-01-03T17:00:00", "code": f"XNL-250103-{n:07d}",
        "procedure_code": "1.001193", "procedure_name": "Đăng ký khai sinh", "field_code": "HOTICH",
        "field_name": "Hộ tịch", "agency_code": "XNL_TUPHAP", "summary": "Khai sinh cho con 👶 (lần đầu)",
        "received_at": "2025-01-03T16:44:00", "appointment_at": "2025-01-10T08:00:00", "finished_at": None,
        "returned_at": None, "status": "DANG_XU_LY.THAM_DINH", "channel": "online", "note": "",
        "applicant": {"personal_id": PID, "full_name": "  nguyễn   thị lan ", "date_of_birth": "1990-05-06",
                      "gender": "F", "address": "Xóm 3, Nghi Lộc, Nghệ An", "phone": "0912345678",
                      "email": "lan@example.vn"},
        "documents": [{"file_name": "to-khai.pdf", "sha256": "ab" * 32, "digitised": 1}],
    }


def bad_item(n: int, case: dict[str, Any]) -> dict[str, Any]:
    item = good_item(n) | {"id": case["id"], "code": f"BAD-{n:04d}"}
    for name, value in repeated(case["row"]).items():
        head, _, tail = name.partition(".")
        target = item[head] if tail else item
        key = tail or head
        if isinstance(value, dict) and value.get("$drop"):
            target.pop(key, None)
        else:
            target[key] = value
    return item


class Resource:
    """The commune's /api/v1/dossiers: one page holding the whole batch."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        # ensure_ascii: lone surrogates travel as \ud800 escapes, as a real JSON answer has them
        self.body = json.dumps({"items": items, "next_cursor": None}, ensure_ascii=True).encode()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(self.body)))])
        return [self.body]


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """Outcome per source id, as the ledger would file it, for one batch of good and bad rows."""
    manifest = mf.read(EXAMPLES / "xa-rest.yaml")
    stream = manifest.source_stream(manifest.streams[0])
    spec = load_mapping(EXAMPLES / "xa_dossier.yaml")
    items = [good_item(n) for n in range(GOOD_COUNT)]
    items[2:2] = [bad_item(n, case) for n, case in enumerate(CORPUS["cases"])]
    with ServerThread(Resource(items)) as server:
        pulled = [pair for batch in RestSource(server.url, stream).read(None, len(items)) for pair in batch]
    assert len(pulled) == len(items)
    extract = RunStaging(tmp_path_factory.mktemp("staging"), "corpus").stage("extract")
    extract.write_part(0, ({"id": str(row[stream.primary_key]), "cursor": cursor.model_dump(),
                            "source_hash": content_hash(row), "row": row} for cursor, row in pulled))
    extracted = extract.read_part(0)
    engine = MappingEngine(spec)
    mapped = [_mapped(engine, record["row"], None) for record in extracted]
    verdicts = gate.evaluate(mapped, SUITE)
    route = SimpleNamespace(spec=spec)
    yield {record["id"]: _outcome(route, record, m, {"status": v.status, "reasons": v.reasons}, None, None)
           | {"verdict": v.status, "payload": m["payload"]}
           for record, m, v in zip(extracted, mapped, verdicts, strict=True)}


@pytest.mark.parametrize("case", params(CORPUS))
def test_a_malformed_row_is_quarantined_naming_record_and_field(judged: dict[str, dict[str, Any]],
                                                                case: dict[str, Any]) -> None:
    outcome = judged[case["id"]]
    assert outcome["outcome"] == QUARANTINED, outcome["verdict"]
    code = f"BAD-{CORPUS['cases'].index(case):04d}"
    assert re.search(case.get("record", f"^{code}$"), outcome["record_key"]), outcome["record_key"][:80]
    matching = [r for r in outcome["reasons"] if r["field"] == case["field"] and r["rule"] == case["rule"]]
    assert matching, [(r["field"], r["rule"]) for r in outcome["reasons"]]
    assert any(re.search(case["error"], r["message"]) for r in matching), [r["message"] for r in matching]
    for reason in outcome["reasons"]:  # reasons reach reports: no personal data in them
        assert PID not in reason["message"] and "Lan" not in reason["message"]


def test_the_good_rows_of_the_same_batch_pass(judged: dict[str, dict[str, Any]]) -> None:
    good = [judged[f"good-{n}"] for n in range(GOOD_COUNT)]
    assert [g["verdict"] for g in good] == ["pass"] * GOOD_COUNT
    assert [g["record_key"] for g in good] == [f"XNL-250103-{n:07d}" for n in range(GOOD_COUNT)]
    assert good[0]["payload"]["ChuHoSo"] == "Nguyễn Thị Lan"
    assert good[0]["payload"]["TrichYeuHoSo"] == "Khai sinh cho con 👶 (lần đầu)"  # astral characters are fine
    assert len(judged) == GOOD_COUNT + len(CORPUS["cases"])  # every row pulled has its outcome
