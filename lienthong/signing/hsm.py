"""Signing keys in a PKCS#11 token (an HSM, a smart card; SoftHSM2 in tests) that never leave it.

The token signs digests; everything else (the JWS, its ``x5c`` chain, verification) stays the code
that file keys use, so a portal or an auditor cannot tell, and need not know, where the key lives.
The key is made inside the token as sensitive and not extractable: the token refuses to reveal
or wrap it, and this module has no code path that asks.

A token key is configured as an Airflow connection (``AIRFLOW_CONN_...`` in the environment, or
the secrets backend), conn type ``pkcs11``: ``password`` is the user PIN, ``extra`` holds
``module`` (the PKCS#11 library), ``token_label`` and ``key_label``. The certificate sits in the
token next to the key, under the same label; ``extra.chain_file`` may add intermediates (PEM).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import Attribute, CertificateType, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from lienthong.signing.jws import Signer

CONN_TYPE = "pkcs11"
# The curve of record keys, as for file keys (keys.py): ES256 signatures.
CURVE = ec.SECP256R1()


class KeyNotExportable(TypeError):
    """Asked for the private key's value: it exists only inside the token."""


@dataclass(frozen=True)
class TokenKeyRef:
    """Where a token key is and how to log in; the PIN is kept out of ``repr`` (and so of logs)."""

    module: str
    token_label: str
    key_label: str
    pin: str = field(repr=False)
    chain_file: str | None = None

    @classmethod
    def from_connection(cls, conn_id: str) -> "TokenKeyRef":
        from lienthong.connectors.connection import get_connection

        conn = get_connection(conn_id)
        extra = conn.extra_dejson
        if conn.conn_type != CONN_TYPE:
            raise ValueError(f"connection {conn_id!r} is of type {conn.conn_type!r}, not {CONN_TYPE!r}")
        missing = [name for name in ("module", "token_label", "key_label") if not extra.get(name)]
        if missing or not conn.password:
            raise ValueError(f"connection {conn_id!r} lacks {', '.join(missing or ['password (the PIN)'])}")
        return cls(extra["module"], extra["token_label"], extra["key_label"], conn.password, extra.get("chain_file"))


@cache
def _library(module: str) -> pkcs11.lib:
    """One load per process: C_Initialize may run once, and reads e.g. SOFTHSM2_CONF then."""
    return pkcs11.lib(module)


def open_session(ref: TokenKeyRef, rw: bool = False) -> pkcs11.Session:
    """A logged-in session. PKCS#11 logs in a whole process at once: while one session is open,
    another one opens logged in already, and the token refuses a second login."""
    token = _library(os.fspath(ref.module)).get_token(token_label=ref.token_label)
    try:
        return token.open(user_pin=ref.pin, rw=rw)
    except pkcs11.exceptions.UserAlreadyLoggedIn:
        return token.open(rw=rw)


class TokenKey(ec.EllipticCurvePrivateKey):
    """An EC private key that signs inside the token: cryptography's interface, so that PyJWT and
    :class:`Signer` use it as they use a file key."""

    def __init__(self, session: pkcs11.Session, handle: pkcs11.PrivateKey,
                 public_key: ec.EllipticCurvePublicKey) -> None:
        self._session = session
        self._handle = handle
        self._public = public_key
        # A PKCS#11 session runs one operation at a time.
        self._lock = threading.Lock()

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        """DER ECDSA, as cryptography returns it; the token hashes nothing, it signs our digest."""
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("a token EC key signs ECDSA only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = data
        else:
            hasher = hashes.Hash(algorithm)
            hasher.update(data)
            digest = hasher.finalize()
        with self._lock:
            raw = self._handle.sign(digest, mechanism=Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise KeyNotExportable("a signing key in a token does no key agreement")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise KeyNotExportable("the private key never leaves the token")

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> bytes:
        raise KeyNotExportable("the private key never leaves the token")

    def __copy__(self) -> "TokenKey":
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> "TokenKey":
        return self


def _public_key(handle: pkcs11.PublicKey) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(encode_ec_public_key(handle))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the token's public key is not an EC key")
    return key


def token_signer(ref: TokenKeyRef) -> Signer:
    """A :class:`Signer` whose key stays in the token; the session stays open while it lives."""
    session = open_session(ref)
    label = ref.key_label
    private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, label=label)
    public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC, label=label)
    certs = list(session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label}))
    if len(certs) != 1:
        raise ValueError(f"token {ref.token_label!r} holds {len(certs)} certificates labelled {label!r}, not one")
    chain = [x509.load_der_x509_certificate(certs[0][Attribute.VALUE])]
    if ref.chain_file:
        chain += x509.load_pem_x509_certificates(Path(ref.chain_file).read_bytes())
    return Signer(TokenKey(session, private, _public_key(public)), chain)


def generate_key(ref: TokenKeyRef) -> ec.EllipticCurvePublicKey:
    """A new P-256 key pair made inside the token under ``ref.key_label``: sensitive, never
    extractable, so no one (the token's owner included) can read or wrap the private half."""
    with open_session(ref, rw=True) as session:
        if list(session.get_objects({Attribute.LABEL: ref.key_label})):
            raise ValueError(f"token {ref.token_label!r} already holds objects labelled {ref.key_label!r}")
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(CURVE.name)}, local=True)
        key_id = hashlib.sha256(ref.key_label.encode("utf-8")).digest()[:16]
        public, _ = params.generate_keypair(
            store=True, label=ref.key_label, id=key_id,
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True,
                              Attribute.PRIVATE: True})
        return _public_key(public)


def store_certificate(ref: TokenKeyRef, cert: x509.Certificate) -> None:
    """Put ``cert`` next to its key (same label and id), where :func:`token_signer` finds it."""
    with open_session(ref, rw=True) as session:
        public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC, label=ref.key_label)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if _public_key(public).public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
                serialization.Encoding.DER, spki):
            raise ValueError(f"the certificate is not for the key {ref.key_label!r} in the token")
        session.create_object({
            Attribute.CLASS: ObjectClass.CERTIFICATE,
            Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
            Attribute.TOKEN: True,
            Attribute.LABEL: ref.key_label,
            Attribute.ID: public[Attribute.ID],
            Attribute.SUBJECT: cert.subject.public_bytes(),
            Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
        })


def enrol(keys_dir: Path, ref: TokenKeyRef, subject: x509.Name) -> x509.Certificate:
    """A new token key certified by the sandbox CA in ``keys_dir``: what an agency does with its
    government CA, the key made in the token and only its public half sent out."""
    from lienthong.signing.keys import certify

    cert = certify(keys_dir, subject, generate_key(ref))
    store_certificate(ref, cert)
    return cert
