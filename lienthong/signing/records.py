"""The sealed record as it travels to the portal: the payload plus ``PhienBan`` and ``ChuKySo``.

``PhienBan`` (version) is the hash of the payload's canonical form, so the same content always
gets the same version and the portal can answer a resend as a duplicate: it is the idempotency
key of one version of one dossier. ``ChuKySo`` (signature) is a detached JWS over the canonical
record including ``PhienBan``, so the version cannot be swapped without breaking the signature.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509

from lienthong.signing.canonical import canonical_json, content_hash
from lienthong.signing.jws import VERSION_MISMATCH, SignatureError, Signer, verify_detached
from lienthong.signing.trust import TrustStore

VERSION = "PhienBan"
SIGNATURE = "ChuKySo"


def _without(record: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in fields}


def version_of(payload: dict[str, Any]) -> str:
    """The content version of a payload; seal fields already present are not part of it."""
    return content_hash(_without(payload, VERSION, SIGNATURE))


def seal(payload: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """The payload with its version and signature; re-sealing a sealed record replaces both."""
    versioned = {**_without(payload, VERSION, SIGNATURE), VERSION: version_of(payload)}
    return {**versioned, SIGNATURE: signer.sign(canonical_json(versioned))}


def unseal(
    record: dict[str, Any], trust: TrustStore, at: dt.datetime | None = None
) -> tuple[dict[str, Any], x509.Certificate]:
    """The payload (without seal fields) and the signer's certificate, or :class:`SignatureError`.

    The signature is checked first: a version that does not match a correctly signed record is
    the signer's own mistake (``version_mismatch``), not tampering on the way.
    """
    signature = record.get(SIGNATURE)
    if not isinstance(signature, str):
        raise SignatureError(f"malformed: the record has no {SIGNATURE}")
    signed = _without(record, SIGNATURE)
    cert = verify_detached(signature, canonical_json(signed), trust, at)
    if signed.get(VERSION) != version_of(signed):
        raise SignatureError(f"version mismatch: {VERSION} is not the hash of the record's content",
                             VERSION_MISMATCH)
    return _without(signed, VERSION), cert
