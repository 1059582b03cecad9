"""A connector's streams against the live system: what it offers, and what the mapping would miss.

Registration compares the mapping with what the manifest declares; only the system itself can say
whether those columns, operations and resources really exist. This is the hook's
``test_connection`` for a whole connector, run by ``lienthong connectors check`` before approval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lienthong.connectors.sources import Probe, open_source
from lienthong.connectors.streams import Stream
from lienthong.mappings.spec import MappingSpec


@dataclass
class StreamCheck:
    stream: str
    probe: Probe | None = None
    missing: list[str] = field(default_factory=list)  # declared by the manifest, absent live
    affected: list[str] = field(default_factory=list)  # mapping fields that would read nothing
    error: str | None = None  # the system could not be reached or read

    @property
    def ok(self) -> bool:
        return self.error is None and not self.missing


def check_stream(protocol: str, conn_id: str, stream: Stream, spec: MappingSpec) -> StreamCheck:
    """Opens the source for real and compares; a failure to connect is reported, not raised."""
    result = StreamCheck(stream.name)
    source = None
    try:
        source = open_source(protocol, stream, conn_id)
        result.probe = source.probe()
    except Exception as exc:  # any protocol's failure is the finding: the engineer needs its text
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    result.missing = result.probe.missing(stream)
    result.affected = unreadable(spec, result.probe)
    return result


def unreadable(spec: MappingSpec, probe: Probe) -> list[str]:
    """The mapping's target fields whose source the live system does not offer."""
    found = [f"{target} (from {fs.source!r})" for target, fs in spec.fields.items()
             if fs.source is not None and fs.source not in probe.fields]
    for name, lst in spec.lists.items():
        offered = probe.children.get(lst.each)
        if offered is None:
            found.append(f"{name} (from child {lst.each!r})")
            continue
        found += [f"{name}[].{target} (from {lst.each}.{fs.source})" for target, fs in lst.fields.items()
                  if fs.source is not None and fs.source not in offered]
    if spec.subject is not None:
        found += [f"subject {role} (from {column!r})" for role, column in spec.subject.model_dump().items()
                  if column not in probe.fields]
    return found
