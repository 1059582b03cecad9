"""One way to pull any source stream, whatever protocol the agency's system speaks.

A route only needs batches of (cursor, row) in (cursor, key) order and, before it is approved,
a look at what the live system really offers so that a mapping naming a missing field is caught
at check time rather than mid-run. Every protocol's source is built from a connection id, like
an Airflow hook, so the route, the CLI and the tests open it the same way.

The row contract every source keeps (the ODBC source set it): a flat dict of JSON-safe values,
to-one objects as ``object.column`` keys, to-many children as lists of flat dicts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

from lienthong.connectors.answers import BadAnswer
from lienthong.connectors.streams import Cursor, Stream
from lienthong.connectors.values import json_safe

PROTOCOLS = ("odbc", "soap", "rest")


@dataclass
class Probe:
    """What the live system offers for a stream: the fields a mapping may name (``object.col``
    for to-one objects), each child's fields, and anything worth telling the engineer."""

    fields: set[str]
    children: dict[str, set[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def missing(self, stream: Stream) -> list[str]:
        """The stream's declared fields and child columns the live system does not offer."""
        problems = [f"field {name!r} is not offered" for name in sorted(stream.fields() - self.fields)]
        for name, child in stream.children.items():
            if name not in self.children:
                problems.append(f"child {name!r} is not offered")
                continue
            problems += [f"child column {name}.{c!r} is not offered"
                         for c in child.columns if c not in self.children[name]]
        return problems


def offered(records: Iterable[Mapping[str, Any]], notes: list[str] | None = None) -> Probe:
    """The fields and children a few nested records show (a to-one object gives ``object.key``)."""
    fields: set[str] = set()
    children: dict[str, set[str]] = {}
    for record in records:
        for name, value in record.items():
            if isinstance(value, Mapping):
                fields.update(f"{name}.{key}" for key in value)
            elif isinstance(value, list):
                found = children.setdefault(name, set())
                for item in value:
                    found.update(item if isinstance(item, Mapping) else ())
            else:
                fields.add(name)
    return Probe(fields, children, notes or [])


def paged(pages: Iterable[list[tuple[Cursor, dict[str, Any]]]], what: str
          ) -> Iterator[list[tuple[Cursor, dict[str, Any]]]]:
    """Pages as they come, refusing one that ends where the page before it ended.

    A paged source asks for the page after its last record; a server that ignores the position
    (or keeps handing out the same next token) answers with the same page for ever, and the run
    would never end. Distinct records have distinct (cursor, key) positions, so a page that does
    not move the position is the server repeating itself.
    """
    last: Cursor | None = None
    for batch in pages:
        if batch[-1][0] == last:
            raise BadAnswer(f"{what}: the page after {last.value} / {last.key} ends where the page before it "
                            "ended; the server repeats itself instead of moving on")
        last = batch[-1][0]
        yield batch


def flatten(record: Mapping[str, Any], stream: Stream) -> dict[str, Any]:
    """A nested record in the row contract, holding the stream's declared fields and children.

    A to-one object that is absent (null, or left out) gives ``None`` for each of its fields, as a
    LEFT JOIN does over ODBC.
    """
    row: dict[str, Any] = {}
    for path in [stream.primary_key, stream.cursor_field, *stream.columns]:
        head, _, tail = path.partition(".")
        value = record.get(head)
        if tail:
            value = value.get(tail) if isinstance(value, Mapping) else None
        row[path] = json_safe(value)
    for name, child in stream.children.items():
        items = record.get(name) or []
        # Anything but a list of objects is handed on as it is, for the mapping to refuse in
        # that record alone rather than stop the batch here.
        row[name] = [{c: json_safe(item.get(c)) for c in child.columns} if isinstance(item, Mapping)
                     else json_safe(item) for item in items] if isinstance(items, list) else json_safe(items)
    return row


def cursor_of(row: Mapping[str, Any], stream: Stream) -> Cursor:
    """The (cursor, key) position of a row; ISO text is read as a date-time, as ODBC binds it."""
    value = row[stream.cursor_field]
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    return Cursor.of(value, row[stream.primary_key])


@runtime_checkable
class Source(Protocol):
    """A stream being pulled: batches after a cursor, and a look at the live system."""

    stream: Stream

    def read(self, after: Cursor | None) -> Iterator[list[tuple[Cursor, dict[str, Any]]]]: ...

    def probe(self) -> Probe: ...


@runtime_checkable
class SplitSource(Source, Protocol):
    """A source that can cut a run into ranges read apart (by several workers at once): a table
    with a (cursor, key) index. A paged API has no such seek, so it is read in one pass."""

    def split(self, after: Cursor | None, ranges: int) -> list[Cursor]: ...

    def read(self, after: Cursor | None, batch_size: int | None = None,
             until: Cursor | None = None) -> Iterator[list[tuple[Cursor, dict[str, Any]]]]: ...


def open_source(protocol: str, stream: Stream, conn_id: str) -> Source:
    """The source for a protocol; its module is imported only when that protocol is used."""
    if protocol == "odbc":
        from lienthong.connectors.odbc import OdbcSource

        return OdbcSource.from_connection(stream, conn_id)
    if protocol == "soap":
        from lienthong.connectors.soap_source import SoapSource

        return SoapSource.from_connection(stream, conn_id)
    if protocol == "rest":
        from lienthong.connectors.rest_source import RestSource

        return RestSource.from_connection(stream, conn_id)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
