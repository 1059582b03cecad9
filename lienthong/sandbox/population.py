"""The population database stand-in (Cơ sở dữ liệu quốc gia về dân cư), spoken to over SOAP.

Both SOAP versions (the envelope handling is :mod:`lienthong.sandbox.soap_server`'s), a batch cap,
a deliberate per-call delay and a concurrency limit that answers a transient "Busy" fault: what
the connector must survive of the real system. The contract itself is ``schemas/population.wsdl``.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

from lxml import etree
from werkzeug.wrappers import Request, Response

from lienthong.logs import get_logger
from lienthong.sandbox.faults import FaultConfig, FaultSwitch
from lienthong.sandbox.soap_server import (
    SOAP11,
    SOAP12,
    SoapEndpoint,
    SoapFault,
    check_action,
    new_envelope,
    operation_element,
    xml_response,
)

log = get_logger(__name__)

PATH = "/population"
NS = "urn:lienthong:sandbox:population:v1"
SINGLE, BATCH = "XacThucCongDan", "XacThucDanhSachCongDan"
ACTIONS = {op: f"{NS}#{op}" for op in (SINGLE, BATCH)}
MAX_BODY = 2 * 1024 * 1024
MAX_BATCH = 100
BUSY = "Busy"

_ID = re.compile(r"\d{12}")
_XS_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:Z|[+-]\d{2}:\d{2})?")


@dataclass(frozen=True)
class Citizen:
    """A registry entry: the truth about a person that requests are compared with."""

    personal_id: str
    full_name: str
    date_of_birth: dt.date
    gender: Literal["M", "F"]


class PopulationRegistry:
    """Citizens in a SQLite file, shared by the threads of a threaded server through one lock.

    Lookups are by primary key and take microseconds, so one connection behind a lock costs less
    than a connection per request thread; the deliberate slowness is added elsewhere.
    """

    def __init__(self, db_path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(db_path, check_same_thread=False)
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS citizens (personal_id TEXT PRIMARY KEY, full_name TEXT NOT NULL,"
                " date_of_birth TEXT NOT NULL, gender TEXT NOT NULL CHECK (gender IN ('M', 'F')))")

    def add_citizens(self, citizens: Iterable[Citizen]) -> int:
        """Upsert by personal ID in one transaction; returns how many were written."""
        written = 0

        def rows() -> Iterator[tuple[str, str, str, str]]:
            nonlocal written
            for c in citizens:
                written += 1
                yield c.personal_id, c.full_name, c.date_of_birth.isoformat(), c.gender

        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO citizens (personal_id, full_name, date_of_birth, gender) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (personal_id) DO UPDATE SET full_name = excluded.full_name,"
                " date_of_birth = excluded.date_of_birth, gender = excluded.gender", rows())
        return written

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM citizens").fetchone()[0])

    def lookup(self, personal_ids: Sequence[str]) -> dict[str, Citizen]:
        """One query for a whole batch (at most 100 IDs, well under SQLite's variable limit)."""
        if not personal_ids:
            return {}
        marks = ", ".join("?" * len(personal_ids))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT personal_id, full_name, date_of_birth, gender FROM citizens WHERE personal_id IN ({marks})",
                list(personal_ids)).fetchall()
        return {r[0]: Citizen(r[0], r[1], dt.date.fromisoformat(r[2]), r[3]) for r in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def name_key(name: str) -> str:
    """Names compare equal whatever the Unicode composition, letter case or spacing.

    Vietnamese text arrives both precomposed (NFC) and decomposed (NFD, from some Mac and legacy
    input methods); "Nguyễn  văn An" and "NGUYỄN VĂN AN" are the same name.
    """
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
    return " ".join(folded.split())


@dataclass(frozen=True)
class _Item:
    request_id: str | None
    personal_id: str
    full_name: str
    date_of_birth: str
    gender: str


@dataclass(frozen=True)
class _Result:
    code: str
    description: str
    fields: tuple[str, ...] = ()


def _check(item: _Item, known: dict[str, Citizen]) -> _Result:
    """One answer. Descriptions name fields, never values: they end up in the caller's logs."""
    problems = []
    if not _ID.fullmatch(item.personal_id):
        problems.append("SoDinhDanh phải gồm đúng 12 chữ số")
    if not name_key(item.full_name):
        problems.append("HoVaTen trống")
    born = _xs_date(item.date_of_birth)
    if born is None:
        problems.append("NgaySinh không phải ngày hợp lệ (YYYY-MM-DD)")
    if item.gender not in ("M", "F"):
        problems.append("GioiTinh phải là M hoặc F")
    if problems:
        return _Result("LOI_DU_LIEU", "Dữ liệu không hợp lệ: " + "; ".join(problems))
    citizen = known.get(item.personal_id)
    if citizen is None:
        return _Result("KHONG_TIM_THAY", "Không tìm thấy công dân có số định danh này")
    fields = tuple(name for name, same in (
        ("HoVaTen", name_key(item.full_name) == name_key(citizen.full_name)),
        ("NgaySinh", born == citizen.date_of_birth),
        ("GioiTinh", item.gender == citizen.gender),
    ) if not same)
    if fields:
        return _Result("KHONG_KHOP", "Thông tin không khớp: " + ", ".join(fields), fields)
    return _Result("KHOP", "Thông tin công dân khớp với cơ sở dữ liệu")


def _xs_date(text: str) -> dt.date | None:
    """An xs:date; a time-zone suffix is allowed by XSD and says nothing about a birthday."""
    match = _XS_DATE.fullmatch(text)
    try:
        return dt.date.fromisoformat(match.group(1)) if match else None
    except ValueError:
        return None


class PopulationService(SoapEndpoint):
    """The WSGI app behind the fault switch: ``GET ?wsdl`` and SOAP ``POST`` on :data:`PATH`."""

    path, namespace, wsdl_file = PATH, NS, "population.wsdl"

    def __init__(self, registry: PopulationRegistry, max_concurrent: int = 16, latency_ms: float = 0) -> None:
        super().__init__()
        self.registry = registry
        self.max_concurrent = max_concurrent
        self.latency_ms = latency_ms
        self._in_flight = 0
        self._lock = threading.Lock()

    def post(self, request: Request) -> Response:
        envelope_ns = {"text/xml": SOAP11, "application/soap+xml": SOAP12}.get(request.mimetype)
        if envelope_ns is None:
            return self.fault(SOAP11, SoapFault("Client", "content type must be text/xml (SOAP 1.1) "
                                                          "or application/soap+xml (SOAP 1.2)", status=415))
        if not self._admit():
            log.debug("busy: %d requests in flight", self.max_concurrent)
            return self.fault(envelope_ns, SoapFault(
                "Server", f"{BUSY}: more than {self.max_concurrent} requests in flight, retry later",
                status=503, subcode=BUSY))
        try:
            if self.latency_ms:
                time.sleep(self.latency_ms / 1000)
            return self._soap(request, envelope_ns)
        except SoapFault as fault:
            log.info("SOAP fault %s: %s", fault.code, fault.reason)
            return self.fault(envelope_ns, fault)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _admit(self) -> bool:
        with self._lock:
            if self._in_flight >= self.max_concurrent:
                return False
            self._in_flight += 1
            return True

    def _soap(self, request: Request, envelope_ns: str) -> Response:
        element = operation_element(request, envelope_ns, MAX_BODY)
        operation = etree.QName(element)
        if operation.namespace != NS or operation.localname not in ACTIONS:
            raise SoapFault("Client", f"unknown operation {{{operation.namespace}}}{operation.localname}")
        check_action(request, envelope_ns, ACTIONS[operation.localname], required=True)
        if operation.localname == SINGLE:
            return self._single(element, envelope_ns)
        return self._batch(element, envelope_ns)

    def _single(self, element: etree._Element, envelope_ns: str) -> Response:
        result = self._verify([_read_item(element, batch=False)])[0]
        envelope, body = new_envelope(envelope_ns)
        answer = etree.SubElement(body, f"{{{NS}}}{SINGLE}Response", nsmap={"p": NS})
        _write_result(etree.SubElement(answer, f"{{{NS}}}KetQua"), None, result)
        return xml_response(envelope, envelope_ns)

    def _batch(self, element: etree._Element, envelope_ns: str) -> Response:
        nodes = element.findall(f"{{{NS}}}CongDan")
        if not nodes:
            raise SoapFault("Client", "a batch needs at least one CongDan")
        if len(nodes) > MAX_BATCH:
            raise SoapFault("Client", f"a batch holds at most {MAX_BATCH} CongDan, got {len(nodes)}")
        items = [_read_item(node, batch=True) for node in nodes]
        ids = [item.request_id for item in items]
        if not all(ids) or len(set(ids)) != len(ids):
            raise SoapFault("Client", "every CongDan needs its own MaYeuCau, unique within the batch")
        results = self._verify(items)
        envelope, body = new_envelope(envelope_ns)
        answer = etree.SubElement(body, f"{{{NS}}}{BATCH}Response", nsmap={"p": NS})
        for item, result in zip(items, results):
            _write_result(etree.SubElement(answer, f"{{{NS}}}KetQua"), item.request_id, result)
        log.debug("batch of %d verified", len(items))
        return xml_response(envelope, envelope_ns)

    def _verify(self, items: Sequence[_Item]) -> list[_Result]:
        known = self.registry.lookup(sorted({i.personal_id for i in items if _ID.fullmatch(i.personal_id)}))
        return [_check(item, known) for item in items]


def _read_item(element: etree._Element, batch: bool) -> _Item:
    """The fields of one citizen (and, in a batch, its MaYeuCau), a missing one read as "".

    One pass over the children, the first of a repeated name counting as with ``findtext``: a
    path lookup per field was a third of the service's CPU for a batch.
    """
    texts: dict[Any, str] = {}
    for child in element:
        texts.setdefault(child.tag, (child.text or "").strip())

    def text(name: str) -> str:
        return texts.get(f"{{{NS}}}{name}", "")

    return _Item(text("MaYeuCau") if batch else None, text("SoDinhDanh"), text("HoVaTen"), text("NgaySinh"),
                 text("GioiTinh"))


def _write_result(node: etree._Element, request_id: str | None, result: _Result) -> None:
    if request_id is not None:
        etree.SubElement(node, f"{{{NS}}}MaYeuCau").text = request_id
    etree.SubElement(node, f"{{{NS}}}MaKetQua").text = result.code
    for name in result.fields:
        etree.SubElement(node, f"{{{NS}}}TruongSaiLech").text = name
    etree.SubElement(node, f"{{{NS}}}MoTa").text = result.description


def create_app(db_path: Path, faults: FaultConfig | None = None, max_concurrent: int = 16,
               latency_ms: float = 0) -> FaultSwitch:
    """The service behind its fault switch; ``latency_ms`` is the real system's slowness, per call."""
    service = PopulationService(PopulationRegistry(db_path), max_concurrent, latency_ms)
    return FaultSwitch(service, faults)
