"""What the sandbox's SOAP stand-ins share: one path serving its WSDL and SOAP calls, envelopes,
faults in both SOAP versions, and a parser that refuses DTDs.

Hand-written on lxml rather than on a SOAP server framework, so that what a connector must
survive is in plain sight: both SOAP versions and their fault shapes, a hard refusal of DTDs and
entities, a body-size cap. Each service adds its own operations (and its own limits) in
:meth:`SoapEndpoint.post`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Literal

from lxml import etree
from werkzeug.wrappers import Request, Response

from lienthong import schemas

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
CONTENT_TYPE = {SOAP11: "text/xml; charset=utf-8", SOAP12: "application/soap+xml; charset=utf-8"}
_WSDL_ADDRESS = ("{http://schemas.xmlsoap.org/wsdl/soap/}address",
                 "{http://schemas.xmlsoap.org/wsdl/soap12/}address")
FaultCode = Literal["Client", "Server", "VersionMismatch"]
_SOAP12_CODE = {"Client": "Sender", "Server": "Receiver", "VersionMismatch": "VersionMismatch"}


class SoapFault(Exception):
    """Raised anywhere below the dispatcher; answered in the SOAP version the caller spoke."""

    def __init__(self, code: FaultCode, reason: str, status: int | None = None, subcode: str | None = None):
        super().__init__(reason)
        self.code, self.reason, self.status, self.subcode = code, reason, status, subcode


class SoapEndpoint:
    """A SOAP service on :attr:`path`: ``GET ?wsdl`` for its contract (``schemas/`` :attr:`wsdl_file`),
    ``POST`` for a call, which the subclass answers."""

    path: str
    namespace: str  # the service's own, for the subcodes of its faults
    wsdl_file: str

    def __init__(self) -> None:
        self._wsdl = schemas.path(self.wsdl_file).read_bytes()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        if request.path.rstrip("/") != self.path:
            response = Response("not found", status=404)
        elif request.method == "GET" and any(k.lower() == "wsdl" for k in request.args):
            response = self.wsdl(request.base_url)
        elif request.method == "POST":
            response = self.post(request)
        else:
            response = Response("GET ?wsdl for the service description, POST SOAP to call it", status=405)
        return response(environ, start_response)

    def wsdl(self, address: str) -> Response:
        """The contract with every port pointing where the caller reached us (proxies, random ports)."""
        root = etree.fromstring(self._wsdl)
        for node in root.iter(*_WSDL_ADDRESS):
            node.set("location", address)
        return Response(etree.tostring(root, xml_declaration=True, encoding="utf-8"),
                        content_type="text/xml; charset=utf-8")

    def post(self, request: Request) -> Response:
        raise NotImplementedError

    def fault(self, envelope_ns: str, fault: SoapFault) -> Response:
        """SOAP 1.1: faultcode/faultstring, HTTP 500. SOAP 1.2: Code/Subcode/Reason, 400 for the
        sender's fault."""
        envelope, body = new_envelope(envelope_ns)
        node = etree.SubElement(body, f"{{{envelope_ns}}}Fault")
        if envelope_ns == SOAP11:
            code = f"soap:{fault.code}" + (f".{fault.subcode}" if fault.subcode else "")
            etree.SubElement(node, "faultcode").text = code
            etree.SubElement(node, "faultstring").text = fault.reason
            status = fault.status or 500
        else:
            code_node = etree.SubElement(node, f"{{{SOAP12}}}Code")
            etree.SubElement(code_node, f"{{{SOAP12}}}Value").text = f"soap:{_SOAP12_CODE[fault.code]}"
            if fault.subcode:
                sub = etree.SubElement(code_node, f"{{{SOAP12}}}Subcode")
                etree.SubElement(sub, f"{{{SOAP12}}}Value", nsmap={"p": self.namespace}).text = f"p:{fault.subcode}"
            reason = etree.SubElement(etree.SubElement(node, f"{{{SOAP12}}}Reason"), f"{{{SOAP12}}}Text")
            reason.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
            reason.text = fault.reason
            status = fault.status or (400 if fault.code == "Client" else 500)
        return xml_response(envelope, envelope_ns, status)


def operation_element(request: Request, envelope_ns: str, max_body: int) -> etree._Element:
    """The one element in the body of the envelope the request carries, after the checks every
    call goes through: the size cap, well-formed XML without a DTD, the envelope's version."""
    if (request.content_length or 0) > max_body:
        raise SoapFault("Client", f"request body over {max_body} bytes")
    data = request.stream.read(max_body + 1)
    if len(data) > max_body:
        raise SoapFault("Client", f"request body over {max_body} bytes")
    root = _parse(data)
    if etree.QName(root).localname != "Envelope" or etree.QName(root).namespace not in CONTENT_TYPE:
        raise SoapFault("Client", "the document is not a SOAP envelope")
    if root.tag != f"{{{envelope_ns}}}Envelope":
        raise SoapFault("VersionMismatch", "the envelope version does not match the content type")
    body = root.find(f"{{{envelope_ns}}}Body")
    payload = [] if body is None else [child for child in body if isinstance(child.tag, str)]
    if len(payload) != 1:
        raise SoapFault("Client", "the SOAP body must hold exactly one operation element")
    return payload[0]


def check_action(request: Request, envelope_ns: str, expected: str, *, required: bool) -> None:
    """The SOAP action the caller named (SOAP 1.1's header, SOAP 1.2's content-type parameter) must
    be the operation's, where it named one; ``required``: SOAP 1.1 callers must send the header."""
    if envelope_ns == SOAP11:
        header = request.headers.get("SOAPAction")
        if header is None and required:
            raise SoapFault("Client", "SOAP 1.1 requests need a SOAPAction header")
        action = (header or "").strip().strip('"')
    else:
        action = request.mimetype_params.get("action", "")
    if action and action != expected:
        raise SoapFault("Client", f"the SOAP action does not match the operation {expected.rpartition('#')[2]}")


def new_envelope(envelope_ns: str) -> tuple[etree._Element, etree._Element]:
    """An empty envelope and its body."""
    envelope = etree.Element(f"{{{envelope_ns}}}Envelope", nsmap={"soap": envelope_ns})
    return envelope, etree.SubElement(envelope, f"{{{envelope_ns}}}Body")


def xml_response(envelope: etree._Element, envelope_ns: str, status: int = 200) -> Response:
    return Response(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"), status=status,
                    content_type=CONTENT_TYPE[envelope_ns])


class _DoctypeGuard:
    """A parser target that stops at ``<!DOCTYPE``, before any declaration inside it is read.

    So an entity bomb or an external entity is refused without relying on the parser's own
    amplification limits, which differ between libxml2 versions.
    """

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise SoapFault("Client", "DTDs and entity declarations are not allowed")

    def close(self) -> None:
        return None


def _parser(target: _DoctypeGuard | None = None) -> etree.XMLParser:
    """A new parser each time: lxml parser objects must not be used by two threads at once."""
    return etree.XMLParser(target=target, resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_pis=True)


def _parse(data: bytes) -> etree._Element:
    """Two passes: a scan that refuses any DOCTYPE (cheap, in C but for one callback), then the tree."""
    try:
        etree.fromstring(data, _parser(_DoctypeGuard()))
        return etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise SoapFault("Client", f"malformed XML at line {exc.lineno}") from None
