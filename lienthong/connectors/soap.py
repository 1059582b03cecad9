"""The population database as an enricher: applicants verified in batches, concurrently, politely.

The real service is slow and rate-limited, so calls are batched (up to 100 citizens each), run a
few at a time, never repeated for a subject already answered, and retried with jittered
exponential backoff when the failure is transient. A batch that still fails is answered
"unavailable" rather than raised: its records wait for the next run while the rest go on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Literal, Sequence
from urllib.parse import urlparse

import requests
import zeep
from lxml import etree
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from zeep.exceptions import (DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden, Fault, TransportError,
                             UnexpectedElementError, ValidationError, XMLParseError, XMLSyntaxError)
from zeep.exceptions import Error as ZeepError
from zeep.plugins import Plugin
from zeep.transports import Transport

from lienthong.connectors.answers import MAX_ANSWER_BYTES, BadAnswer, read_body
from lienthong.connectors.connection import POPULATION, base_url, get_connection
from lienthong.connectors.pacing import Pacer, paced_session
from lienthong.connectors.remembered import Remembered
from lienthong.logs import get_logger

log = get_logger(__name__)

Status = Literal["match", "mismatch", "not_found", "invalid", "unavailable"]
_STATUS: dict[str, Status] = {"KHOP": "match", "KHONG_KHOP": "mismatch", "KHONG_TIM_THAY": "not_found",
                              "LOI_DU_LIEU": "invalid"}
_FIELD = {"HoVaTen": "full_name", "NgaySinh": "date_of_birth", "GioiTinh": "gender"}
_BUSY = "Busy"


@dataclass(frozen=True)
class Subject:
    """Who a record says its applicant is. Built from raw source rows, so nothing is checked here."""

    personal_id: str | None = None
    full_name: str | None = None
    date_of_birth: dt.date | str | None = None
    gender: Literal["M", "F"] | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """The answer for one subject; ``detail`` never carries personal data (it reaches reports)."""

    status: Status
    fields: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class _Query:
    key: bytes
    personal_id: str
    full_name: str
    date_of_birth: dt.date
    gender: str


def _prepare(subject: Subject) -> _Query | Verification:
    """A query ready to send, or "invalid" for what cannot even be put in the request.

    The ID's format is left to the service, which answers it per citizen like any other check.
    """
    personal_id = str(subject.personal_id or "").strip()
    full_name = " ".join(unicodedata.normalize("NFC", str(subject.full_name or "")).split())
    gender = str(subject.gender or "").strip().upper()
    missing = [name for name, value in (("personal_id", personal_id), ("full_name", full_name),
                                        ("date_of_birth", subject.date_of_birth), ("gender", gender)) if not value]
    if missing:
        return Verification("invalid", detail="missing " + ", ".join(missing))
    born = _date(subject.date_of_birth)
    if born is None:
        return Verification("invalid", detail="date_of_birth is not an ISO date")
    if gender not in ("M", "F"):
        return Verification("invalid", detail="gender is not M or F")
    key = hashlib.sha256("\x1f".join((personal_id, full_name, born.isoformat(), gender)).encode()).digest()
    return _Query(key, personal_id, full_name, born, gender)


def _date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.datetime.fromisoformat(str(value).strip()).date()
    except ValueError:
        return None


def _verification(result: Any) -> Verification:
    """An answer outside the contract is "unavailable": the record waits instead of passing.

    ``result`` is read by key: a dict from :class:`_PlainAnswer` or zeep's value object."""
    status = None if result is None else _STATUS.get(result["MaKetQua"])
    if status is None:
        return Verification("unavailable", detail="no answer in the contract's terms for this citizen")
    return Verification(status, tuple(_FIELD.get(f, f) for f in result["TruongSaiLech"] or ()), result["MoTa"] or "")


def is_transient(exc: BaseException) -> bool:
    """Worth another try: overload, a gateway hiccup, a dropped connection, a slow answer."""
    if isinstance(exc, Fault):
        codes = [exc.code or "", *(getattr(s, "localname", str(s)) for s in exc.subcodes or ())]
        return any(c.rsplit(".", 1)[-1].rsplit(":", 1)[-1] == _BUSY for c in codes)
    if isinstance(exc, TransportError):
        return exc.status_code == 429 or exc.status_code >= 500
    if isinstance(exc, requests.HTTPError):  # raised while loading the WSDL
        return exc.response is not None and (exc.response.status_code == 429 or exc.response.status_code >= 500)
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


# Answers refused for what they are, not for a failure of the service: said in words, because
# the exceptions' own text carries parts of the answer (an entity's content, the document).
_REFUSED = {
    DTDForbidden: "answer refused: it declares a DTD",
    EntitiesForbidden: "answer refused: it declares XML entities",
    ExternalReferenceForbidden: "answer refused: it refers to an external document",
    XMLSyntaxError: "answer refused: it is not well-formed XML",
    XMLParseError: "answer refused: it does not follow the WSDL (elements or namespaces not in it)",
    UnexpectedElementError: "answer refused: it does not follow the WSDL (elements or namespaces not in it)",
    ValidationError: "answer refused: it does not follow the WSDL (a value of the wrong type)",
}


def _describe(exc: BaseException) -> str:
    """Enough to tell failures apart in a log, without the answer body (it may echo the request)."""
    if isinstance(exc, Fault):
        return f"SOAP fault {exc.code}"
    if isinstance(exc, BadAnswer) or type(exc) is ZeepError:  # said in our own words
        return str(exc)
    refused = next((text for kind, text in _REFUSED.items() if isinstance(exc, kind)), None)
    if refused is not None:
        return refused
    if isinstance(exc, TransportError) and exc.status_code < 400:
        # zeep's "Server returned response (200) with invalid XML: <parser's reason>.\nContent: ..."
        return "answer refused: " + str(exc.message).split("\nContent:", 1)[0]
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")


class _QuietTransport(Transport):
    """zeep's transport, made safe for answers from systems we do not control.

    zeep logs whole envelopes at DEBUG (names and birth dates included): this one does not. It
    reads no answer or document larger than ``max_answer_bytes``. And it loads documents (the
    WSDL, the schemas it imports) over HTTP(S) only: zeep mounts a ``file://`` adapter and opens
    plain paths, so a hostile WSDL importing ``file:///etc/passwd`` would have the hub read its
    own files.
    """

    def __init__(self, *args: Any, max_answer_bytes: int = MAX_ANSWER_BYTES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session.adapters.pop("file://", None)
        self.max_answer_bytes = max_answer_bytes

    def post(self, address: str, message: bytes | str, headers: dict[str, str]) -> requests.Response:
        response = self.session.post(address, data=message, headers=headers, timeout=self.operation_timeout,
                                     stream=True)
        with closing(response):
            # zeep reads ``response.content``: fill it from the bounded read.
            response._content = read_body(response, self.max_answer_bytes, f"POST {urlparse(address).path}")
        return response

    def load(self, url: str) -> bytes:
        if urlparse(url).scheme not in ("http", "https"):
            raise ExternalReferenceForbidden(url)
        return super().load(url)

    def _load_remote_data(self, url: str) -> bytes:
        with closing(self.session.get(url, timeout=self.load_timeout, stream=True)) as response:
            response.raise_for_status()
            return read_body(response, self.max_answer_bytes, f"GET {urlparse(url).path}")


class _ContractAnswers(Plugin):
    """zeep reads an answer's body by position and local name, so it would take another
    operation's answer, or elements in no namespace or a foreign one, for the one it expects.
    An answer whose body is not the operation's output element, wholly in the WSDL's namespaces,
    is refused here (a SOAP fault goes on to zeep's own handling)."""

    def __init__(self) -> None:
        self.namespaces: set[str] = set()

    def ingress(self, envelope: etree._Element, http_headers: Any, operation: Any) -> tuple[etree._Element, Any]:
        body = envelope.find("{*}Body")
        answer = [child for child in (body if body is not None else ()) if isinstance(child.tag, str)]
        if any(etree.QName(child).localname == "Fault" for child in answer):
            return envelope, http_headers
        expected = getattr(operation.output.body, "qname", None)
        if expected is not None and [etree.QName(child).text for child in answer] != [expected.text]:
            raise XMLParseError(f"the answer's body is not {expected.localname}")
        # The namespaces of the few distinct tags, not of every element: a batch answer holds
        # hundreds of elements of five names, and a QName per element was most of this check.
        tags = {node.tag for child in answer for node in child.iter(etree.Element)}
        if not {etree.QName(tag).namespace for tag in tags} <= self.namespaces:
            raise XMLParseError("the answer has elements outside the WSDL's namespaces")
        return envelope, http_headers


class BatchCall:
    """A list operation of the client's default port (the one ``client.service`` binds), with
    zeep rendering only the first item of the list.

    zeep renders a value by walking the schema with checks at every step: about 120 µs a citizen
    here, most of the hub's CPU in verify (two minutes of a million-record backfill). zeep still
    builds the envelope, its headers and the first item, checking that item against the schema;
    the other items are written from the WSDL's own element list, each value through its schema
    type's ``xmlvalue``, at about 30 µs each: the same bytes zeep would send for the whole list (a
    test compares them). The answer goes through zeep as ever (its parser's refusals, plugins,
    faults), except that a plain answer's items are read by :class:`_PlainAnswer`, as dicts.

    Items must be flat sequences of single values (as ``CongDanYeuCau`` is). The body is completed
    after zeep's egress, so this is not for a client with WS-Security or an egress plugin that
    reads the body (this module's clients have neither).
    """

    def __init__(self, client: zeep.Client, operation: str, items: str) -> None:
        service = next(iter(client.wsdl.services.values()))
        port = next(iter(service.ports.values()))
        self.client, self.binding, self.options = client, port.binding, port.binding_options
        self.name, self.items = operation, items
        try:
            self.operation = port.binding.get(operation)
            item = dict(self.operation.input.body.type.elements)[items]
            fields = item.type.elements
            self.answer = _PlainAnswer(self.operation)
            self.reply = _PlainFirst(self.operation, self.answer)
        except (ValueError, KeyError, AttributeError):
            raise ZeepError(f"the service description has no {operation} that takes a list of {items} "
                            "and answers a list") from None
        if any(element.accepts_multiple or not hasattr(element.type, "xmlvalue") for _, element in fields):
            raise ZeepError(f"the service description's {operation}.{items} is not a list of flat items")
        self.body = f"{{*}}Body/{self.operation.input.body.qname}"
        self.item = item.qname
        self.fields = [(name, element.qname, element.type.xmlvalue) for name, element in fields]

    def envelope(self, values: Sequence[dict[str, Any]]) -> tuple[etree._Element, dict[str, str]]:
        envelope, headers = self.binding._create(self.name, (), {self.items: list(values[:1])},
                                                 client=self.client, options=self.options)
        parent = envelope.find(self.body)
        for value in values[1:]:
            node = etree.SubElement(parent, self.item)
            for name, qname, text in self.fields:
                etree.SubElement(node, qname).text = text(value[name])
        return envelope, headers

    def __call__(self, values: Sequence[dict[str, Any]]) -> Any:
        envelope, headers = self.envelope(values)
        response = self.client.transport.post_xml(self.options["address"], envelope, headers)
        return self.binding.process_reply(self.client, self.reply, response)


class _PlainAnswer:
    """Reads a list answer whose items are plain (each a sequence of text-only elements, as the
    WSDL has them, with no attribute or nesting; zeep's parser has dropped comments) without
    zeep's reader, which cost ~90 µs a citizen. Anything else, well-formed or hostile, is left to
    zeep, so what is refused and how stays zeep's. Each value goes through its schema type's
    ``pythonvalue``, and each item becomes a dict of them: the values zeep gives (a test compares),
    but not zeep's value object, whose building and attribute reads cost ~28 µs an item, two thirds
    of reading it. Readers of an answer take its items' values by key, which zeep's objects offer
    too, for the answers zeep reads.
    """

    def __init__(self, operation: Any) -> None:
        output = operation.output.body
        (_, items), = output.type.elements
        soap = operation.nsmap["soap-env"]
        self.envelope, self.body = f"{{{soap}}}Envelope", f"{{{soap}}}Body"
        self.answer, self.item = output.qname.text, items.qname.text
        self.fields = [(name, element.qname.text, element.type.pythonvalue, element.min_occurs,
                        element.max_occurs if isinstance(element.max_occurs, int) else 1 << 30,
                        element.accepts_multiple)
                       for name, element in items.type.elements]

    def __call__(self, envelope: etree._Element) -> list[Any] | None:
        """The items, or None for an answer zeep must read."""
        body = envelope.find(self.body) if envelope.tag == self.envelope else None
        answer = body[0] if body is not None and len(body) == 1 else None
        if answer is None or answer.tag != self.answer or answer.attrib or answer.text and answer.text.strip():
            return None
        read = []
        for item in answer:
            values = self._item(item)
            if values is None:
                return None
            read.append(values)
        return read

    def _item(self, item: etree._Element) -> dict[str, Any] | None:
        if item.tag != self.item or item.attrib or item.text and item.text.strip():
            return None
        children = list(item)
        at = 0
        values: dict[str, Any] = {}
        for name, tag, convert, least, most, many in self.fields:
            found = []
            while at < len(children) and children[at].tag == tag and len(found) < most:
                child = children[at]
                if child.attrib or len(child):
                    return None
                try:  # an empty element is None to zeep; a value its type refuses is zeep's to read
                    found.append(None if child.text is None else convert(child.text))
                except (TypeError, ValueError):
                    return None
                at += 1
            if len(found) < least:
                return None
            values[name] = found if many else (found[0] if found else None)
        if at != len(children) or any(c.tail and c.tail.strip() for c in children):
            return None
        return values


class _PlainFirst:
    """The operation, whose answer is read by ``read`` where it can, by zeep otherwise."""

    def __init__(self, operation: Any, read: _PlainAnswer) -> None:
        self._operation, self._read = operation, read

    def __getattr__(self, name: str) -> Any:
        return getattr(self._operation, name)

    def process_reply(self, envelope: etree._Element) -> Any:
        read = self._read(envelope)
        return self._operation.process_reply(envelope) if read is None else read


def safe_client(wsdl_url: str, session: requests.Session, timeout: float, max_answer_bytes: int) -> zeep.Client:
    """A zeep client for a service we do not control: strict, with no DTD, entity or external
    reference in any document or answer, over the bounded HTTP-only transport, and taking only
    answers shaped as the WSDL says."""
    transport = _QuietTransport(session=session, timeout=timeout, operation_timeout=timeout,
                                max_answer_bytes=max_answer_bytes)
    settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    contract = _ContractAnswers()
    client = zeep.Client(wsdl_url, transport=transport, settings=settings, plugins=[contract])
    contract.namespaces = set(client.wsdl.types.namespaces)
    return client


class PopulationVerifier:
    """A hook-like client of the population database: built from a connection, safe to share.

    One zeep client serves every worker thread: after the WSDL is loaded it is only read, and
    the requests session under it pools ``concurrency`` connections. The calls of every
    :meth:`verify` go through one pool of ``concurrency`` threads, so callers may verify several
    parts at once (one part's calls wait on the network while another's answers are parsed)
    without ever having more than ``concurrency`` calls in flight.
    """

    def __init__(self, wsdl_url: str, concurrency: int = 4, batch_size: int = 100, timeout: float = 10,
                 max_attempts: int = 5, backoff: float = 0.5, max_backoff: float = 8,
                 cache_size: int = 200_000, max_answer_bytes: int = MAX_ANSWER_BYTES,
                 pacer: Pacer | None = None) -> None:
        """``pacer``: the service's quota, for every request (calls, retries and the WSDL's loading);
        by default none."""
        if not 1 <= batch_size <= 100:
            raise ValueError("batch_size must be between 1 and 100, the service's limit")
        self.wsdl_url = wsdl_url
        self.concurrency = max(1, concurrency)
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff, self.max_backoff = backoff, max_backoff
        self.max_answer_bytes = max_answer_bytes
        self.pacer = pacer or Pacer()
        self._session = paced_session(self.pacer, pool_maxsize=self.concurrency)
        self._call: BatchCall | None = None
        self._call_lock = threading.Lock()
        self._calls = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="population")
        self.remembered: Remembered[Verification] = Remembered(cache_size)

    @classmethod
    def from_connection(cls, conn_id: str = POPULATION) -> "PopulationVerifier":
        """``extra`` may set path (default ``/population``), concurrency, batch_size, timeout, max_attempts,
        max_answer_bytes, cache_size (at most this many answers remembered, ~140 bytes each; default
        200,000), rate_limit (requests a second, the WSDL's loading and retries included; default
        none). The rate limit is the agency's quota, kept by the whole deployment: every client of
        ``conn_id`` takes its requests' slots from one timetable in the state database."""
        conn = get_connection(conn_id)
        extra = conn.extra_dejson
        options = {name: kind(extra[name]) for name, kind in (
            ("concurrency", int), ("batch_size", int), ("timeout", float), ("max_attempts", int),
            ("max_answer_bytes", int), ("cache_size", int)) if name in extra}
        return cls(f"{base_url(conn)}{extra.get('path', '/population')}?wsdl", **options,
                   pacer=Pacer.of_connection(conn_id, extra))

    def check(self) -> list[str]:
        """Load the WSDL now, in one attempt, and name its operations: the connection test (raises on failure)."""
        client = self._load()
        return sorted({name for service in client.wsdl.services.values() for port in service.ports.values()
                       for name in port.binding.all()})

    def verify(self, subjects: Sequence[Subject]) -> list[Verification]:
        """One answer per subject, in order; never raises for the service's failures."""
        results: list[Verification | None] = [None] * len(subjects)
        queries: dict[bytes, _Query] = {}
        positions: dict[bytes, list[int]] = {}
        for position, subject in enumerate(subjects):
            prepared = _prepare(subject)
            if isinstance(prepared, Verification):
                results[position] = prepared
            elif (cached := self.remembered.get(prepared.key)) is not None:
                results[position] = cached
            else:
                queries.setdefault(prepared.key, prepared)
                positions.setdefault(prepared.key, []).append(position)
        unique = list(queries.values())
        batches = [unique[i:i + self.batch_size] for i in range(0, len(unique), self.batch_size)]
        for key, answer in self._run(batches).items():
            if answer.status != "unavailable":
                self.remembered.put(key, answer)
            for position in positions[key]:
                results[position] = answer
        final = [r for r in results if r is not None]
        tally: dict[str, int] = {}
        for r in final:
            tally[r.status] = tally.get(r.status, 0) + 1
        log.info("verified %d subjects with %d calls for %d distinct queries: %s",
                 len(final), len(batches), len(unique), tally)
        return final

    def close(self) -> None:
        self._calls.shutdown(cancel_futures=True)
        self._session.close()

    def _run(self, batches: list[list[_Query]]) -> dict[bytes, Verification]:
        if not batches:
            return {}
        try:
            call = self._batch_call()
        except (ZeepError, requests.RequestException, BadAnswer) as exc:
            log.warning("population database unreachable, %d batches unavailable: %s", len(batches), _describe(exc))
            down = Verification("unavailable", detail=f"service description could not be loaded: {_describe(exc)}")
            return {q.key: down for batch in batches for q in batch}
        answers: dict[bytes, Verification] = {}
        for batch_answers in self._calls.map(lambda b: self._verify_batch(call, b), batches):
            answers.update(batch_answers)
        return answers

    def _verify_batch(self, call: BatchCall, batch: list[_Query]) -> dict[bytes, Verification]:
        request = [{"MaYeuCau": str(i), "SoDinhDanh": q.personal_id, "HoVaTen": q.full_name,
                    "NgaySinh": q.date_of_birth, "GioiTinh": q.gender} for i, q in enumerate(batch)]
        try:
            reply = self._retrying()(call, request)
        except (ZeepError, requests.RequestException, BadAnswer) as exc:
            log.warning("batch of %d unavailable: %s", len(batch), _describe(exc))
            failed = Verification("unavailable", detail=f"population database did not answer: {_describe(exc)}")
            return {q.key: failed for q in batch}
        by_id = {r["MaYeuCau"]: r for r in reply or []}
        return {query.key: _verification(by_id.get(str(i))) for i, query in enumerate(batch)}

    def _retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_random_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception(is_transient),
            before_sleep=lambda state: log.debug("attempt %d failed (%s), retrying", state.attempt_number,
                                                 _describe(state.outcome.exception())),
            reraise=True,
        )

    def _batch_call(self) -> BatchCall:
        """Loaded on first use, with retries, so that building a verifier never needs the network."""
        with self._call_lock:
            if self._call is None:
                self._call = BatchCall(self._retrying()(self._load), "XacThucDanhSachCongDan", "CongDan")
            return self._call

    def _load(self) -> zeep.Client:
        return safe_client(self.wsdl_url, self._session, self.timeout, self.max_answer_bytes)
