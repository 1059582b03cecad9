"""Sandbox keys: a throw-away CA and the agency signing key it certifies.

In production the agency key lives in the agency's HSM or token and its certificate comes from
the government CA; nothing here is meant for that. The sandbox needs the same shape (a key, its
certificate, a CA the portal trusts) so that signing and verification run exactly as they will
for real, with files any standard tool (openssl, a JOSE library) can read.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import NameOID

from lienthong.logs import get_logger
from lienthong.signing.jws import Signer
from lienthong.signing.trust import TrustStore

log = get_logger(__name__)

SANDBOX_AGENCY_CODE = "000.00.00.H40"
SANDBOX_AGENCY_NAME = "Cơ quan thử nghiệm lienthong (sandbox)"
CA_VALIDITY = dt.timedelta(days=3650)
AGENCY_VALIDITY = dt.timedelta(days=730)
# The platform's own key: it signs run manifests, a statement by the hub, not by any agency.
PLATFORM_KEY = "platform"
PLATFORM_SUBJECT = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lienthong sandbox"),
    x509.NameAttribute(NameOID.COMMON_NAME, "lienthong platform (run ledger)"),
])
# Certificates start a little in the past so that a verifier whose clock lags still accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)
# How long a CRL is good for: verifiers refuse to judge with an older one (see trust.py).
CRL_VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class KeyPaths:
    ca_cert: Path
    ca_key: Path
    agency_key: Path
    agency_cert: Path
    crl: Path

    @classmethod
    def in_dir(cls, keys_dir: Path) -> "KeyPaths":
        keys_dir = Path(keys_dir)
        return cls(keys_dir / "ca.pem", keys_dir / "ca.key.pem", keys_dir / "agency.key.pem",
                   keys_dir / "agency.pem", keys_dir / "ca.crl.pem")

    @staticmethod
    def named(keys_dir: Path, name: str) -> tuple[Path, Path]:
        """(private key, certificate chain) of the signing key called ``name``."""
        if not name.replace("-", "_").isidentifier():
            raise ValueError(f"{name!r} is not a key name (letters, digits, '-', '_')")
        return Path(keys_dir) / f"{name}.key.pem", Path(keys_dir) / f"{name}.pem"


def agency_subject(agency_code: str, agency_name: str) -> x509.Name:
    """The agency's name and its QCVN 102 code (as UID), so a verifier sees who signed."""
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, agency_name),
        x509.NameAttribute(NameOID.COMMON_NAME, agency_name),
        x509.NameAttribute(NameOID.USER_ID, agency_code),
    ])


def issue_certificate(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    signing_key: CertificateIssuerPrivateKeyTypes,
    issuer: x509.Certificate | None = None,
    *,
    ca: bool = False,
    valid_from: dt.datetime | None = None,
    valid_for: dt.timedelta = AGENCY_VALIDITY,
    extended_key_usage: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    """A CA certificate (``ca=True``) or a signing certificate; self-signed when ``issuer`` is None.

    Signing certificates get digitalSignature + contentCommitment: a record signature is a
    statement by the agency, not just an authentication. ``extended_key_usage`` is marked
    critical, as RFC 3161 requires of a time-stamping certificate (a key for one job only).
    """
    start = valid_from or dt.datetime.now(dt.timezone.utc) - CLOCK_SKEW
    issuer_name = issuer.subject if issuer is not None else subject
    issuer_public = issuer.public_key() if issuer is not None else public_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=not ca, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False)
    )
    if extended_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_key_usage)), critical=True)
    return builder.sign(signing_key, hashes.SHA256())


def init_keys(
    keys_dir: Path,
    agency_code: str = SANDBOX_AGENCY_CODE,
    agency_name: str = SANDBOX_AGENCY_NAME,
    force: bool = False,
) -> KeyPaths:
    """Create the sandbox CA, agency key and platform key, keeping what exists unless ``force``.

    Keeping keys matters: records already signed, and the portal's trust store, refer to them.
    A missing agency key is issued by the existing CA; a new CA always gets a new agency key.
    """
    paths = KeyPaths.in_dir(keys_dir)
    Path(keys_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    new_ca = force or not (paths.ca_cert.exists() and paths.ca_key.exists())
    if new_ca:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_subject = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lienthong sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, "lienthong sandbox CA"),
        ])
        ca_cert = issue_certificate(ca_subject, ca_key.public_key(), ca_key, ca=True, valid_for=CA_VALIDITY)
        _write_key(paths.ca_key, ca_key)
        _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        log.info("sandbox CA created in %s", keys_dir)
    if new_ca or not (paths.agency_key.exists() and paths.agency_cert.exists()):
        _issue_from_ca(paths, agency_subject(agency_code, agency_name), paths.agency_key, paths.agency_cert)
        log.info("agency signing key for %s created in %s", agency_code, keys_dir)
    else:
        log.info("keys in %s kept", keys_dir)
    platform_key, platform_cert = KeyPaths.named(keys_dir, PLATFORM_KEY)
    if new_ca or not (platform_key.exists() and platform_cert.exists()):
        _issue_from_ca(paths, PLATFORM_SUBJECT, platform_key, platform_cert)
        log.info("platform key (signs run manifests) created in %s", keys_dir)
    return paths


def _sandbox_ca(keys_dir: Path) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    paths = KeyPaths.in_dir(keys_dir)
    if not (paths.ca_cert.exists() and paths.ca_key.exists()):
        raise FileNotFoundError(f"no sandbox CA in {keys_dir}: run `lienthong keys init` first")
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    return x509.load_pem_x509_certificate(paths.ca_cert.read_bytes()), key  # type: ignore[return-value]


def certify(keys_dir: Path, subject: x509.Name, public_key: CertificatePublicKeyTypes,
            **validity: dt.datetime | dt.timedelta) -> x509.Certificate:
    """A signing certificate from the sandbox CA for a key held elsewhere (a token, a rotation)."""
    ca_cert, ca_key = _sandbox_ca(keys_dir)
    return issue_certificate(subject, public_key, ca_key, ca_cert, **validity)  # type: ignore[arg-type]


def _issue_from_ca(paths: KeyPaths, subject: x509.Name, key_file: Path, cert_file: Path) -> None:
    """A new key and its certificate from the sandbox CA, written as ``key_file``/``cert_file``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certify(paths.ca_cert.parent, subject, key.public_key())
    _write_key(key_file, key)
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM))


def issue_crl(keys_dir: Path, revoked: Sequence[x509.RevokedCertificate] | None = None,
              now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """The sandbox CA's CRL (``ca.crl.pem``), listing ``revoked`` or, when None, what it listed before.

    Called with no list it renews the CRL before its next update, keeping every revocation.
    """
    ca_cert, ca_key = _sandbox_ca(keys_dir)
    crl_file = KeyPaths.in_dir(keys_dir).crl
    if revoked is None:
        revoked = list(x509.load_pem_x509_crl(crl_file.read_bytes())) if crl_file.exists() else []
    now = now or dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now - CLOCK_SKEW)
               .next_update(now + CRL_VALIDITY)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                              critical=False))
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    _write(crl_file, crl.public_bytes(serialization.Encoding.PEM))
    return crl


def revoke(keys_dir: Path, serial: int, reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
           at: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """Add ``serial`` to the sandbox CA's CRL, revoked from ``at`` (default now) for ``reason``.

    The reason matters to verifiers (see trust.py): ``superseded`` after a rotation keeps earlier
    signatures good, ``key_compromise`` (and ``unspecified``) voids them all.
    """
    crl_file = KeyPaths.in_dir(keys_dir).crl
    kept = [entry for entry in (x509.load_pem_x509_crl(crl_file.read_bytes()) if crl_file.exists() else [])
            if entry.serial_number != serial]
    entry = (x509.RevokedCertificateBuilder()
             .serial_number(serial)
             .revocation_date(at or dt.datetime.now(dt.timezone.utc))
             .add_extension(x509.CRLReason(reason), critical=False)
             .build())
    crl = issue_crl(keys_dir, [*kept, entry])
    log.info("certificate serial %x revoked (%s) in %s", serial, reason.value, crl_file)
    return crl


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write then rename, so a reader never sees half a key."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_key(path: Path, key: PrivateKeyTypes) -> None:
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), mode=0o600)


def signing_connection(name: str) -> str:
    """The Airflow connection that makes the key called ``name`` a token key (see hsm.py)."""
    return f"lienthong_key_{name.replace('-', '_')}"


def load_signer(keys_dir: Path, name: str = "agency") -> Signer:
    """The signer called ``name``: a file key (``<name>.key.pem`` and ``<name>.pem``, leaf then
    intermediates) when those files exist, else a PKCS#11 token key when the Airflow connection
    ``lienthong_key_<name>`` (conn type ``pkcs11``) exists.

    A connector manifest names the key that signs for it, so one platform can sign for several
    agencies, each with its own certificate and each key where its agency keeps it.
    """
    key_file, cert_file = KeyPaths.named(keys_dir, name)
    if key_file.exists() and cert_file.exists():
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
        return Signer(key, chain)
    from airflow.exceptions import AirflowNotFoundException

    from lienthong.signing.hsm import TokenKeyRef, token_signer

    try:
        ref = TokenKeyRef.from_connection(signing_connection(name))
    except AirflowNotFoundException:
        raise FileNotFoundError(f"no signing key {name!r}: neither files in {keys_dir} (run `lienthong keys init`) "
                                f"nor a pkcs11 connection {signing_connection(name)!r}") from None
    return token_signer(ref)


def load_trust_store(paths: Path | Sequence[Path]) -> TrustStore:
    """Roots from PEM files; a directory stands for the sandbox CA (``ca.pem``) and its CRL
    (``ca.crl.pem``, when the CA has issued one) inside it."""
    items = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    dirs = [KeyPaths.in_dir(p) for p in items if p.is_dir()]
    files = [p for p in items if not p.is_dir()] + [d.ca_cert for d in dirs]
    return TrustStore.from_pem_files(files, [d.crl for d in dirs if d.crl.exists()])
