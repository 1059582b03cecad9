"""Detached compact JWS (RFC 7515, Appendix F) carrying the signer's certificate chain in ``x5c``.

Detached because the signature travels inside the record it signs, so repeating the payload in
the token would only double its size. Not RFC 7797 (``b64: false``): with the ordinary base64url
payload in the signing input, any RFC 7515 library verifies ``header.base64url(payload).signature``
re-assembled from the record, which is what an auditor with standard tools will do.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from functools import lru_cache
from typing import Any, Sequence

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _segment(text: str, name: str) -> bytes:
    """A base64url segment, strictly: unpadded, and the one encoding of its bytes (no stray bits).

    PyJWT checks the alphabet one character at a time in Python; with the certificate chain in
    every header that was half the cost of verifying a record at the portal.
    """
    if len(text) % 4 == 1 or not _BASE64URL.fullmatch(text):
        raise SignatureError(f"malformed: the {name} is not base64url")
    decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url(decoded) != text:
        raise SignatureError(f"malformed: the {name} is not base64url")
    return decoded


def _header(segment: str) -> dict[str, Any]:
    try:
        header = json.loads(_segment(segment, "header"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise SignatureError("malformed: the header is not JSON") from exc
    if not isinstance(header, dict):
        raise SignatureError("malformed: the header is not a JSON object")
    return header


def signer_thumbprint(jws: str) -> str | None:
    """The ``x5t#S256`` the header names, read without checking anything: to index, never to trust."""
    return _named_signer(jws.split(".", 1)[0])


@lru_cache(maxsize=64)
def _named_signer(header: str) -> str | None:
    """Cached: every record a key signs carries the same header, its chain included, and the record
    stage asks for each record twice."""
    return _header(header).get("x5t#S256")


def _parse_chain(x5c: Any) -> list[x509.Certificate]:
    if not isinstance(x5c, list) or not 1 <= len(x5c) <= MAX_CHAIN or not all(isinstance(i, str) for i in x5c):
        raise SignatureError(f"malformed: x5c must list 1 to {MAX_CHAIN} certificates")
    return list(_load_chain(tuple(x5c)))


@lru_cache(maxsize=64)
def _load_chain(x5c: tuple[str, ...]) -> tuple[x509.Certificate, ...]:
    """Every record a signer seals carries the same chain: parsed once, not once a record."""
    try:
        return tuple(x509.load_der_x509_certificate(base64.b64decode(item, validate=True)) for item in x5c)
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
    header = _header(parts[0])
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise SignatureError(f"algorithm not allowed: {alg!r}")
    extensions = [name for name in ("crit", "b64") if name in header]
    if extensions:
        raise SignatureError(f"malformed: header parameters {extensions} are not accepted "
                             "(no critical extensions, no unencoded payload)")
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
    _check_signature(alg, leaf.public_key(), f"{parts[0]}.{_b64url(payload)}".encode("ascii"),
                     _segment(parts[2], "signature"))
    return leaf


def _check_signature(alg: str, public_key: Any, signing_input: bytes, signature: bytes) -> None:
    """PyJWT's algorithm for ``alg``, with its minimum key length enforced."""
    algorithm = _JWS.get_algorithm_by_name(alg)
    key = algorithm.prepare_key(public_key)
    too_short = algorithm.check_key_length(key)
    if too_short:
        raise SignatureError(f"malformed: {too_short}")
    if not algorithm.verify(signing_input, key, signature):
        raise SignatureError("bad signature")
