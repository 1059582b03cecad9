"""Detached compact JWS (RFC 7515, Appendix F) carrying the signer's certificate chain in ``x5c``.

Detached because the signature travels inside the record it signs, so repeating the payload in
the token would only double its size. Not RFC 7797 (``b64: false``): with the ordinary base64url
payload in the signing input, any RFC 7515 library verifies ``header.base64url(payload).signature``
re-assembled from the record, which is what an auditor with standard tools will do.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
from functools import lru_cache
from typing import Any, Sequence

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.exceptions import InvalidSignatureError, PyJWTError

from lienthong.signing.trust import MAX_CHAIN, CertificateError, TrustStore

# Asymmetric only: "none" proves nothing and HS* would let anyone holding the public certificate
# forge a signature (the classic key-confusion attack).
ALLOWED_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256")
_JWS = jwt.PyJWS(algorithms=ALLOWED_ALGORITHMS, options={"enforce_minimum_key_length": True})

SIGNATURE_INVALID = "signature_invalid"
CERTIFICATE_UNTRUSTED = "certificate_untrusted"
VERSION_MISMATCH = "version_mismatch"


class SignatureError(Exception):
    """A signature to refuse; ``status`` sorts the reason for whoever answers the sender."""

    def __init__(self, reason: str, status: str = SIGNATURE_INVALID) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def algorithms_for(key: Any) -> tuple[str, ...]:
    """The JWS algorithms a key (private or public) can serve, the default first."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return {"secp256r1": ("ES256",), "secp384r1": ("ES384",)}.get(key.curve.name, ())
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return ("RS256", "PS256")
    return ()


def thumbprint(cert: x509.Certificate) -> str:
    """``x5t#S256``: lets a verifier match the leaf without parsing the whole chain."""
    return _b64url(cert.fingerprint(hashes.SHA256()))


def _spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class Signer:
    """Signs with one key whose certificate chain (leaf first) goes into every signature."""

    def __init__(self, private_key: Any, chain: Sequence[x509.Certificate], algorithm: str | None = None) -> None:
        if not chain:
            raise ValueError("a signer needs its certificate (chain, leaf first)")
        if _spki(private_key.public_key()) != _spki(chain[0].public_key()):
            raise ValueError("the private key does not belong to the leaf certificate")
        usable = algorithms_for(private_key)
        if not usable:
            raise ValueError(f"unsupported key type for JWS: {type(private_key).__name__}")
        if algorithm is not None and algorithm not in usable:
            raise ValueError(f"algorithm {algorithm} does not fit this key (use one of {usable})")
        self.algorithm = algorithm or usable[0]
        self.chain = list(chain)
        self._key = private_key
        # PyJWT adds typ "JWT" unless told otherwise; these tokens are not JWTs.
        self._headers = {
            "typ": None,
            "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
                    for cert in self.chain],
            "x5t#S256": thumbprint(self.chain[0]),
        }

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    def sign(self, payload: bytes) -> str:
        """``header..signature``: the payload segment is left out, the caller keeps the payload."""
        token = _JWS.encode(payload, self._key, algorithm=self.algorithm, headers=self._headers)
        header, _, signature = token.split(".")
        return f"{header}..{signature}"


def unverified_header(jws: str) -> dict[str, Any]:
    """The protected header, read without checking anything: to index or display, never to trust.

    Every record a key signs carries the same header, its certificate chain included, and the
    record stage reads it for each record, twice: decoded once per header, not once per record.
    """
    return copy.deepcopy(_header_of(jws.partition(".")[0]))


@lru_cache(maxsize=64)
def _header_of(segment: str) -> dict[str, Any]:
    return _JWS.get_unverified_header(f"{segment}..")


def _parse_chain(x5c: Any) -> list[x509.Certificate]:
    if not isinstance(x5c, list) or not 1 <= len(x5c) <= MAX_CHAIN:
        raise SignatureError(f"malformed: x5c must list 1 to {MAX_CHAIN} certificates")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(item, validate=True)) for item in x5c]
    except (TypeError, ValueError, binascii.Error) as exc:
        raise SignatureError("malformed: x5c holds something that is not a DER certificate") from exc


def verify_detached(jws: str, payload: bytes, trust: TrustStore, at: dt.datetime | None = None) -> x509.Certificate:
    """The signer's certificate, once the signature over ``payload`` and its chain check out at ``at``.

    Raises :class:`SignatureError`; its ``status`` is ``certificate_untrusted`` when the chain is
    the problem (unknown root, expired or not yet valid, wrong key usage), ``signature_invalid``
    for everything else (malformed token, algorithm not allowed, bad signature).
    """
    parts = jws.split(".") if isinstance(jws, str) else []
    if len(parts) != 3 or parts[1] or not parts[0]:
        raise SignatureError("malformed: not a detached compact JWS (header..signature)")
    token = f"{parts[0]}.{_b64url(payload)}.{parts[2]}"
    try:
        header = _JWS.get_unverified_header(token)
    except PyJWTError as exc:
        raise SignatureError(f"malformed: {exc}") from exc
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise SignatureError(f"algorithm not allowed: {alg!r}")
    if "crit" in header or "b64" in header:
        raise SignatureError("malformed: critical header extensions are not accepted")
    chain = _parse_chain(header.get("x5c"))
    at = at or dt.datetime.now(dt.timezone.utc)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.timezone.utc)
    try:
        leaf = trust.verify_chain(chain, at)
    except CertificateError as exc:
        raise SignatureError(str(exc), CERTIFICATE_UNTRUSTED) from exc
    if header.get("x5t#S256", thumbprint(leaf)) != thumbprint(leaf):
        raise SignatureError("malformed: x5t#S256 does not match the leaf certificate")
    if alg not in algorithms_for(leaf.public_key()):
        raise SignatureError(f"algorithm {alg} does not match the certificate key")
    try:
        _JWS.decode_complete(token, key=leaf.public_key(), algorithms=[alg])
    except InvalidSignatureError as exc:
        raise SignatureError("bad signature") from exc
    except PyJWTError as exc:
        raise SignatureError(f"malformed: {exc}") from exc
    return leaf
