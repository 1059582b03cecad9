"""One byte form per JSON value (RFC 8785), so that hashes and signatures agree across systems.

Any verifier, ours, the portal's or an auditor's, re-encodes a record with the same rules and gets
the same bytes; ordinary ``json.dumps`` output depends on key order and float formatting.

Records are encoded several times on their way (source hash, version, signature, the portal's
check, the ledger), and the reference encoder is pure Python (~60 µs a dossier). For the values
records are made of (ASCII keys, strings, integers within JCS's range, booleans, null) orjson with
sorted keys writes exactly the RFC 8785 bytes ten times faster: its string escapes are the
JCS ones, and for ASCII keys its byte-order sort is the UTF-16 order JCS asks for. Anything else
(floats, whose JCS form is ECMAScript's, non-ASCII keys, tuples, subclasses) goes to the
reference encoder, which also raises the errors for values JCS cannot encode.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import rfc8785

_INT_LIMIT = 2**53 - 1  # JCS numbers are IEEE doubles: integers beyond this are refused


def canonical_json(value: Any) -> bytes:
    if _plain(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # a lone surrogate: the reference encoder decides
            pass
    return rfc8785.dumps(value)


def _plain(value: Any) -> bool:
    """Whether orjson's encoding of ``value`` is its RFC 8785 form."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_INT_LIMIT <= value <= _INT_LIMIT
    if kind is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(item) for item in value)
    return False


def content_hash(value: Any) -> str:
    """Hex SHA-256 of the canonical form: the identity of a record's content."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
