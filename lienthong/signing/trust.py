"""Which certificates may sign: a chain must lead to a root the verifier chose to trust.

The roots are configuration (the sandbox CA, or the government CA in production), never taken
from the message: a signature carries its chain in ``x5c``, and only the roots here decide whether
that chain counts. Revocation (CRL/OCSP) is out of scope for the sandbox.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

# A longer chain than any real PKI uses is a denial-of-service attempt, not a certificate path.
MAX_CHAIN = 5


class CertificateError(Exception):
    """The chain does not lead to a trusted root, or one of its certificates may not be used now."""


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def check_validity(cert: x509.Certificate, at: dt.datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise CertificateError(f"certificate not yet valid: {cert.subject.rfc4514_string()}")
    if at > cert.not_valid_after_utc:
        raise CertificateError(f"certificate expired: {cert.subject.rfc4514_string()}")


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _check_ca(cert: x509.Certificate) -> None:
    """An issuer must say it is a CA; otherwise any leaf could mint further leaves."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    usage = _key_usage(cert)
    if constraints is None or not constraints.ca or (usage is not None and not usage.key_cert_sign):
        raise CertificateError(f"issuer is not a CA: {cert.subject.rfc4514_string()}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class TrustStore:
    """The roots a verifier accepts, indexed by subject for the path search."""

    def __init__(self, roots: Iterable[x509.Certificate]) -> None:
        self.roots = list(roots)
        if not self.roots:
            raise ValueError("a trust store needs at least one root certificate")
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = defaultdict(list)
        for root in self.roots:
            self._by_subject[root.subject].append(root)
        self._fingerprints = {fingerprint(root) for root in self.roots}

    @classmethod
    def from_pem_files(cls, paths: Iterable[Path]) -> "TrustStore":
        """Each file may hold several PEM certificates (a CA bundle)."""
        return cls(cert for path in paths for cert in x509.load_pem_x509_certificates(Path(path).read_bytes()))

    def verify_chain(self, chain: Sequence[x509.Certificate], at: dt.datetime) -> x509.Certificate:
        """The leaf, once every link up to a trusted root checks out at ``at``.

        ``chain`` is leaf first, then intermediates in order; it may end with the root itself.
        Raises :class:`CertificateError` naming the first link that fails.
        """
        if not chain:
            raise CertificateError("empty certificate chain")
        if len(chain) > MAX_CHAIN:
            raise CertificateError(f"certificate chain longer than {MAX_CHAIN}")
        leaf = chain[0]
        usage = _key_usage(leaf)
        if usage is None or not usage.digital_signature:
            raise CertificateError("key usage: leaf certificate is not for digital signatures")
        for position, cert in enumerate(chain):
            check_validity(cert, at)
            if position:
                if fingerprint(cert) in self._fingerprints:
                    return leaf
                _check_ca(cert)
            root = self._trusted_issuer(cert)
            if root is not None:
                check_validity(root, at)
                return leaf
            if position + 1 == len(chain):
                break
            if not _issued_by(cert, chain[position + 1]):
                raise CertificateError(f"broken chain: {cert.subject.rfc4514_string()} "
                                       "is not signed by the next certificate")
        raise CertificateError(f"untrusted chain: no trusted root issued {chain[-1].issuer.rfc4514_string()}")

    def _trusted_issuer(self, cert: x509.Certificate) -> x509.Certificate | None:
        return next((root for root in self._by_subject.get(cert.issuer, ()) if _issued_by(cert, root)), None)
