"""One byte form per JSON value (RFC 8785), so that hashes and signatures agree across systems.

Any verifier, ours, the portal's or an auditor's, re-encodes a record with the same rules and gets
the same bytes; ordinary ``json.dumps`` output depends on key order and float formatting.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def canonical_json(value: Any) -> bytes:
    return rfc8785.dumps(value)


def content_hash(value: Any) -> str:
    """Hex SHA-256 of the canonical form: the identity of a record's content."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
