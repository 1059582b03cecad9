"""Pulling a stream from a SOAP system's paged "list by update time" operation (zeep).

Older one-stop systems offer one operation that takes a position (update time and record id) and
a page size and answers the records after it plus a "more follow" flag. Each system names those
elements its own way, so the names come from the connection's extras (defaults: the sandbox
district system's WSDL), never from code. The position passed on is always the last record's
(cursor, key), so a page boundary inside a run of equal update times loses or repeats nothing.
"""

from __future__ import annotations

from typing import Any, Iterator

import zeep
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from zeep.helpers import serialize_object
from zeep.xsd import ComplexType

from lienthong.connectors.answers import MAX_ANSWER_BYTES
from lienthong.connectors.connection import base_url, get_connection
from lienthong.connectors.pacing import Pacer, paced_session
from lienthong.connectors.soap import is_transient, safe_client
from lienthong.connectors.sources import Probe, cursor_of, flatten, paged
from lienthong.connectors.streams import Cursor, Stream

# Request and response element names of the paged operation; any may be overridden in extras.
ELEMENTS = {"after_time": "SauThoiDiem", "after_key": "SauId", "limit": "SoBanGhi", "records": "HoSo",
            "more": "ConDuLieu"}


class SoapSource:
    """A stream over one SOAP operation; the WSDL is loaded on first use, with retries."""

    def __init__(self, wsdl_url: str, stream: Stream, elements: dict[str, str] | None = None,
                 timeout: float = 30, max_attempts: int = 5, max_answer_bytes: int = MAX_ANSWER_BYTES,
                 pacer: Pacer | None = None) -> None:
        """``pacer``: the system's quota, for every request (pages, retries and the WSDL's loading);
        by default none."""
        if not stream.operation:
            raise ValueError(f"stream {stream.name!r} names no SOAP operation")
        self.wsdl_url = wsdl_url
        self.stream = stream
        self.elements = {**ELEMENTS, **(elements or {})}
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self._retrying = Retrying(stop=stop_after_attempt(max(1, max_attempts)),
                                  wait=wait_random_exponential(multiplier=0.5, max=8),
                                  retry=retry_if_exception(is_transient), reraise=True)
        self._session = paced_session(pacer or Pacer())
        self._client: zeep.Client | None = None

    @classmethod
    def from_connection(cls, stream: Stream, conn_id: str) -> "SoapSource":
        """``extra``: path of the endpoint (``?wsdl`` is added), element names, timeout, max_attempts,
        max_answer_bytes, rate_limit (the system's quota, kept by the whole deployment)."""
        conn = get_connection(conn_id)
        extra = conn.extra_dejson
        elements = {key: str(extra[key]) for key in ELEMENTS if key in extra}
        options = {name: kind(extra[name]) for name, kind in (
            ("timeout", float), ("max_attempts", int), ("max_answer_bytes", int)) if name in extra}
        return cls(f"{base_url(conn)}{extra.get('path', '/')}?wsdl", stream, elements, **options,
                   pacer=Pacer.of_connection(conn_id, extra))

    def read(self, after: Cursor | None, batch_size: int | None = None
             ) -> Iterator[list[tuple[Cursor, dict[str, Any]]]]:
        """Pages in (cursor, key) order until the system says no more follow."""
        return paged(self._pages(after, batch_size or self.stream.page_size), self.stream.operation)

    def _pages(self, after: Cursor | None, size: int) -> Iterator[list[tuple[Cursor, dict[str, Any]]]]:
        operation = getattr(self._service(), self.stream.operation)
        e = self.elements
        while True:
            request: dict[str, Any] = {e["limit"]: size}
            if after is not None:
                request[e["after_time"]], request[e["after_key"]] = after.value, after.key
            answer = serialize_object(self._retrying(operation, **request), dict)
            rows = [flatten(record, self.stream) for record in answer.get(e["records"]) or []]
            if rows:
                batch = [(cursor_of(row, self.stream), row) for row in rows]
                yield batch
                after = batch[-1][0]
            if not rows or not answer.get(e["more"]):
                return

    def probe(self) -> Probe:
        """The operations the WSDL lists, and the elements of the stream operation's records."""
        client = self._service_client()
        operations = sorted({name for service in client.wsdl.services.values()
                             for port in service.ports.values() for name in port.binding.all()})
        notes = [f"operations: {', '.join(operations)}"]
        if self.stream.operation not in operations:
            return Probe(set(), {}, [*notes, f"operation {self.stream.operation!r} is not offered"])
        binding = next(port.binding for service in client.wsdl.services.values()
                       for port in service.ports.values() if self.stream.operation in port.binding.all())
        answer = binding.get(self.stream.operation).output.body.type
        records = dict(answer.elements).get(self.elements["records"])
        if records is None or not isinstance(records.type, ComplexType):
            return Probe(set(), {}, [*notes, f"the answer has no {self.elements['records']!r} records"])
        fields: set[str] = set()
        children: dict[str, set[str]] = {}
        for name, element in records.type.elements:
            if not isinstance(element.type, ComplexType):
                fields.add(name)
            elif element.max_occurs == "unbounded" or element.max_occurs > 1:
                children[name] = {sub for sub, _ in element.type.elements}
            else:
                fields.update(f"{name}.{sub}" for sub, _ in element.type.elements)
        return Probe(fields, children, notes)

    def close(self) -> None:
        self._session.close()

    def _service(self) -> Any:
        return self._service_client().service

    def _service_client(self) -> zeep.Client:
        if self._client is None:
            self._client = self._retrying(self._load)
        return self._client

    def _load(self) -> zeep.Client:
        return safe_client(self.wsdl_url, self._session, self.timeout, self.max_answer_bytes)
