"""A run's manifest: what the run was made of and a Merkle root over what became of every record.

The manifest is stored as its canonical JSON bytes (RFC 8785), the exact bytes the platform key
signs and the TSA time-stamps, so that an auditor re-reads, hashes and verifies the same bytes we
did; the manifest's hash is the next run's ``prev_manifest_hash``, chaining the runs of a route.
The leaf of a record is the canonical JSON of its audit fields only, so one record can be shown
(with its proof) without revealing the others.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lienthong import schemas
from lienthong.signing import merkle
from lienthong.signing.canonical import canonical_json, content_hash

if TYPE_CHECKING:
    from lienthong.routes.route import Route

FORMAT = "lienthong-run-manifest/1"
SCHEMA_FILE = "portal_dossier.schema.json"  # the contract every target's records are checked against
LEAF_FIELDS = ("record_key", "source_id", "source_hash", "payload_hash", "version", "outcome", "reasons",
               "signature", "signer", "ack_code", "ack_status", "acked_at")


@dataclass(frozen=True)
class Seal:
    """The platform's detached CMS signature (DER) over the manifest bytes, and the TSA's
    RFC 3161 answer (DER TimeStampResp) over that signature, None when the TSA was unreachable."""

    signature: bytes
    timestamp: bytes | None


Sealer = Callable[[bytes], Seal]


def route_facts(route: Route) -> dict[str, Any]:
    """What a run's route was made of, pinned by version and hash.

    The schema hash covers the whole schema file, not only the route's ``$defs`` entry, because
    that entry refers to others.
    """
    return {
        "connector": {"id": route.connector_id, "version": route.connector_version},
        "mapping": {"name": route.spec.name, "version": route.spec.version, "hash": route.mapping_hash},
        "schema": {"file": SCHEMA_FILE, "def": route.target.schema_def,
                   "hash": content_hash(schemas.load_json(SCHEMA_FILE))},
        "suite": {"file": route.target.suite_file, "hash": content_hash(schemas.load_json(route.target.suite_file))},
    }


def utc_time(value: dt.datetime | str | None) -> dt.datetime | None:
    """A time in UTC, whatever the database or a staged part gave back (SQLite drops the zone: UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def utc_text(value: dt.datetime | str | None) -> str | None:
    """One text form for a time, as :func:`utc_time` reads it: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    ``isoformat`` rather than ``strftime``: the same text in about half the time, and ``record``
    formats each outcome's time twice, for its leaf and to check the stored row (5% of the stage)."""
    value = utc_time(value)
    return None if value is None else value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def leaf_data(outcome: dict[str, Any]) -> dict[str, Any]:
    """The audit fields of a record outcome, as hashed into the tree and written to an export."""
    data = {name: outcome.get(name) for name in LEAF_FIELDS}
    data["acked_at"] = utc_text(data["acked_at"])
    return data


def leaf_bytes(outcome: dict[str, Any]) -> bytes:
    return canonical_json(leaf_data(outcome))


def document(*, run_id: str, route: str, seq: int, prev_manifest_hash: str | None, status: str,
             settled_at: dt.datetime, cursor_before: Any, cursor_after: Any, counts: dict[str, Any],
             quarantine_reasons: dict[str, int], tree_size: int, merkle_root: str,
             facts: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT, "run_id": run_id, "route": route, "seq": seq,
        "prev_manifest_hash": prev_manifest_hash, "status": status, "settled_at": utc_text(settled_at),
        **facts,
        "cursor": {"before": cursor_before, "after": cursor_after},
        "counts": counts, "quarantine_reasons": quarantine_reasons,
        "tree": merkle.head(merkle_root, tree_size),
    }


def encode(doc: dict[str, Any]) -> tuple[str, str]:
    """(canonical JSON text, its hex SHA-256): what is stored, signed and chained."""
    data = canonical_json(doc)
    return data.decode("utf-8"), hashlib.sha256(data).hexdigest()


def decode(text: str) -> dict[str, Any]:
    return json.loads(text)


def platform_sealer(keys_dir: Path, tsa_conn: str | None = None) -> Sealer:
    """Sign with the platform key in ``keys_dir``; time-stamp when the TSA connection is set up.

    A TSA that does not answer must not stop the run from settling (the records are already at
    the portal): the manifest is then stored unstamped, and ``audit verify`` says so.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from lienthong.signing.cms import sign_detached
    from lienthong.signing.keys import PLATFORM_KEY, KeyPaths

    key_file, cert_file = KeyPaths.named(keys_dir, PLATFORM_KEY)
    if not (key_file.exists() and cert_file.exists()):
        raise FileNotFoundError(f"no platform key in {keys_dir}: run `lienthong keys init` first")
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    chain = x509.load_pem_x509_certificates(cert_file.read_bytes())

    def seal(data: bytes) -> Seal:
        signature = sign_detached(data, key, chain)  # type: ignore[arg-type]
        return Seal(signature, stamp_or_none(signature, tsa_conn))

    return seal


def stamp_or_none(data: bytes, tsa_conn: str | None = None) -> bytes | None:
    """The TSA's answer over ``data``, or None when the TSA is not configured or does not answer."""
    from lienthong.audit import timestamp
    from lienthong.connectors import connection
    from lienthong.logs import get_logger

    conn_id = tsa_conn or connection.TSA
    try:
        return timestamp.stamp(data, conn_id)
    except Exception as exc:  # any failure, a missing connection too: the run settles unstamped, verify says so
        get_logger(__name__).warning("manifest not time-stamped (TSA %s): %s", conn_id, exc)
        return None
