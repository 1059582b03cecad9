"""A district's one-stop dossier system (UBND huyện) that offers its dossiers only over SOAP.

Older one-stop systems publish a paged "list by update time" operation and nothing else; this
stand-in does the same on the contract ``schemas/dossier_soap.wsdl``, with the element names
such systems use, so that the connector meets a record shape the provincial database never had.
SOAP 1.1 only; the envelope handling (DTD refusal, faults) is the population service's.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable, Iterable

from lxml import etree
from werkzeug.wrappers import Request, Response

from lienthong import schemas
from lienthong.sandbox.dossier_system import APPLICANT, DossierPages
from lienthong.sandbox.faults import FaultConfig, FaultSwitch
from lienthong.sandbox.population import (
    _WSDL_ADDRESS,
    SOAP11,
    SoapFault,
    _envelope,
    _parse,
    _xml_response,
    fault_response,
)

PATH = "/dossiers"
NS = "urn:lienthong:sandbox:dossier-soap:v1"
OPERATION = "DanhSachHoSoTheoThoiGian"
ACTION = f"{NS}#{OPERATION}"
MAX_PAGE = 1000
MAX_BODY = 64 * 1024

# Database column -> element of tns:HoSo, in the schema's sequence order.
RECORD = {
    "id": "Id", "code": "MaHoSo", "procedure_code": "MaTTHC", "procedure_name": "TenTTHC",
    "field_code": "MaLinhVuc", "field_name": "TenLinhVuc", "agency_code": "MaDonVi", "summary": "TrichYeu",
    "received_at": "NgayTiepNhan", "appointment_at": "NgayHenTra", "finished_at": "NgayKetThucXuLy",
    "returned_at": "NgayTraKetQua", "status": "TrangThai", "channel": "KenhNop", "note": "GhiChu",
    "updated_at": "NgayCapNhat",
}
APPLICANT_ELEMENTS = dict(zip(APPLICANT, ["SoDinhDanh", "HoTen", "NgaySinh", "GioiTinh", "DiaChi", "DienThoai",
                                          "Email"]))
DOCUMENT = {"file_name": "TenTep", "sha256": "MaBam", "digitised": "DaSoHoa"}


class DossierSoapService:
    """``GET ?wsdl`` and SOAP 1.1 ``POST`` on :data:`PATH`."""

    def __init__(self, pages: DossierPages) -> None:
        self.pages = pages
        self._wsdl = schemas.path("dossier_soap.wsdl").read_bytes()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        if request.path.rstrip("/") != PATH:
            response = Response("not found", status=404)
        elif request.method == "GET" and any(k.lower() == "wsdl" for k in request.args):
            response = self._wsdl_for(request.base_url)
        elif request.method == "POST":
            try:
                response = self._call(request)
            except SoapFault as fault:
                response = fault_response(SOAP11, fault)
        else:
            response = Response("GET ?wsdl for the service description, POST SOAP to call it", status=405)
        return response(environ, start_response)

    def _wsdl_for(self, address: str) -> Response:
        root = etree.fromstring(self._wsdl)
        for node in root.iter(*_WSDL_ADDRESS):
            node.set("location", address)
        return Response(etree.tostring(root, xml_declaration=True, encoding="utf-8"),
                        content_type="text/xml; charset=utf-8")

    def _call(self, request: Request) -> Response:
        if request.mimetype != "text/xml":
            raise SoapFault("Client", "content type must be text/xml (SOAP 1.1)", status=415)
        data = request.stream.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise SoapFault("Client", f"request body over {MAX_BODY} bytes")
        root = _parse(data)
        if root.tag != f"{{{SOAP11}}}Envelope":
            raise SoapFault("VersionMismatch", "only SOAP 1.1 envelopes are served here")
        body = root.find(f"{{{SOAP11}}}Body")
        payload = [] if body is None else [child for child in body if isinstance(child.tag, str)]
        if len(payload) != 1 or payload[0].tag != f"{{{NS}}}{OPERATION}":
            raise SoapFault("Client", f"the SOAP body must hold exactly one {OPERATION} element")
        action = (request.headers.get("SOAPAction") or "").strip().strip('"')
        if action and action != ACTION:
            raise SoapFault("Client", f"the SOAP action does not match the operation {OPERATION}")
        return self._list(payload[0])

    def _list(self, element: etree._Element) -> Response:
        after_time = (element.findtext(f"{{{NS}}}SauThoiDiem") or "").strip()
        after_id = (element.findtext(f"{{{NS}}}SauId") or "").strip()
        try:
            limit = int(element.findtext(f"{{{NS}}}SoBanGhi") or "")
            after = (dt.datetime.fromisoformat(after_time).replace(tzinfo=None).isoformat(),
                     int(after_id)) if after_time else None
        except ValueError:
            raise SoapFault("Client", "SoBanGhi must be an integer, SauThoiDiem an xs:dateTime and SauId "
                                      "an integer") from None
        if not 1 <= limit <= MAX_PAGE:
            raise SoapFault("Client", f"SoBanGhi must be between 1 and {MAX_PAGE}")
        if after_time and not after_id:
            raise SoapFault("Client", "SauThoiDiem needs SauId: many dossiers share one update time")
        rows, more = self.pages.page(after, limit)
        envelope, body = _envelope(SOAP11)
        answer = etree.SubElement(body, f"{{{NS}}}{OPERATION}Response", nsmap={"tns": NS})
        for row in rows:
            _write_record(etree.SubElement(answer, f"{{{NS}}}HoSo"), row)
        etree.SubElement(answer, f"{{{NS}}}ConDuLieu").text = "true" if more else "false"
        return _xml_response(envelope, SOAP11)


def _write_record(node: etree._Element, row: dict[str, Any]) -> None:
    """Absent values are left out (every such element is minOccurs=0), as the schema orders them."""
    _write_fields(node, row, RECORD)
    if row.get("applicant.full_name") is not None:
        applicant = {f"applicant.{column}": element for column, element in APPLICANT_ELEMENTS.items()}
        _write_fields(etree.SubElement(node, f"{{{NS}}}ChuHoSo"), row, applicant)
    for document in row["documents"]:
        _write_fields(etree.SubElement(node, f"{{{NS}}}TaiLieu"), document, DOCUMENT)


def _write_fields(node: etree._Element, row: dict[str, Any], elements: dict[str, str]) -> None:
    for column, element in elements.items():
        if row.get(column) is not None:
            etree.SubElement(node, f"{{{NS}}}{element}").text = str(row[column])


def create_app(db_path: Path, faults: FaultConfig | None = None) -> FaultSwitch:
    return FaultSwitch(DossierSoapService(DossierPages(db_path)), faults)
