"""A district's one-stop dossier system (UBND huyện) that offers its dossiers only over SOAP.

Older one-stop systems publish a paged "list by update time" operation and nothing else; this
stand-in does the same on the contract ``schemas/dossier_soap.wsdl``, with the element names
such systems use, so that the connector meets a record shape the provincial database never had.
SOAP 1.1 only; the envelope handling (DTD refusal, faults) is :mod:`lienthong.sandbox.soap_server`'s.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from lxml import etree
from werkzeug.wrappers import Request, Response

from lienthong.sandbox.dossier_system import APPLICANT, DossierPages
from lienthong.sandbox.faults import FaultConfig, FaultSwitch
from lienthong.sandbox.soap_server import (
    SOAP11,
    SoapEndpoint,
    SoapFault,
    check_action,
    new_envelope,
    operation_element,
    xml_response,
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


class DossierSoapService(SoapEndpoint):
    """``GET ?wsdl`` and SOAP 1.1 ``POST`` on :data:`PATH`."""

    path, namespace, wsdl_file = PATH, NS, "dossier_soap.wsdl"

    def __init__(self, pages: DossierPages) -> None:
        super().__init__()
        self.pages = pages

    def post(self, request: Request) -> Response:
        try:
            if request.mimetype != "text/xml":
                raise SoapFault("Client", "content type must be text/xml (SOAP 1.1)", status=415)
            element = operation_element(request, SOAP11, MAX_BODY)
            if element.tag != f"{{{NS}}}{OPERATION}":
                raise SoapFault("Client", f"the SOAP body must hold exactly one {OPERATION} element")
            check_action(request, SOAP11, ACTION, required=False)
            return self._list(element)
        except SoapFault as fault:
            return self.fault(SOAP11, fault)

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
        envelope, body = new_envelope(SOAP11)
        answer = etree.SubElement(body, f"{{{NS}}}{OPERATION}Response", nsmap={"tns": NS})
        for row in rows:
            _write_record(etree.SubElement(answer, f"{{{NS}}}HoSo"), row)
        etree.SubElement(answer, f"{{{NS}}}ConDuLieu").text = "true" if more else "false"
        return xml_response(envelope, SOAP11)


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
