"""Which certificates may sign: a chain must lead to a root the verifier chose to trust.

The roots are configuration (the sandbox CA, or the government CA in production), never taken
from the message: a signature carries its chain in ``x5c``, and only the roots here decide whether
that chain counts. Revocation comes from CRLs the verifier was given (the sandbox CA issues one);
OCSP is out of scope.

**The time rule.** A chain is judged at one instant ``at``: by default the moment of verification,
but the *proven* signing time when there is one (the RFC 3161 time stamp the ledger keeps on each
run manifest). So after a key rotation, records signed with the old key while its certificate was
valid keep verifying after that certificate expires, and a signature made after expiry never does.
A revocation counts from its date for the routine reasons (superseded, cessation of operation,
affiliation changed): what was signed before stands. A key compromise, a CA compromise or a
revocation that gives no reason refuses every signature by that certificate, whenever made, since
whoever holds a stolen key can claim any time.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ReasonFlags

# A longer chain than any real PKI uses is a denial-of-service attempt, not a certificate path.
MAX_CHAIN = 5
# Revocations that void signatures made before the revocation date too (see the time rule above).
_VOIDS_THE_PAST = frozenset({None, ReasonFlags.unspecified, ReasonFlags.key_compromise, ReasonFlags.ca_compromise})


class CertificateError(Exception):
    """The chain does not lead to a trusted root, or one of its certificates may not be used now."""


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def describe(cert: x509.Certificate) -> str:
    """Subject and serial: the serial is what a CRL and the issuing CA know the certificate by."""
    return f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:x})"


def check_validity(cert: x509.Certificate, at: dt.datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise CertificateError(f"certificate not yet valid at {at:%Y-%m-%dT%H:%M:%SZ} "
                               f"(from {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}): {describe(cert)}")
    if at > cert.not_valid_after_utc:
        raise CertificateError(f"certificate expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ} "
                               f"(judged at {at:%Y-%m-%dT%H:%M:%SZ}): {describe(cert)}")


def check_revocation(cert: x509.Certificate, issuer: x509.Certificate,
                     crls: Iterable[x509.CertificateRevocationList], at: dt.datetime) -> None:
    """Refuse ``cert`` if a CRL signed by ``issuer`` revokes it as of ``at`` (see the time rule).

    A CRL the issuer did not sign is ignored, and one past its next update is refused: a stale
    list cannot say that nothing was revoked since.
    """
    for crl in crls:
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            continue
        if crl.next_update_utc is not None and at > crl.next_update_utc:
            raise CertificateError(f"CRL of {issuer.subject.rfc4514_string()} out of date "
                                   f"(next update was {crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}): "
                                   f"cannot tell whether {describe(cert)} is revoked")
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is None:
            continue
        reason = _reason(entry)
        if reason in _VOIDS_THE_PAST or at >= entry.revocation_date_utc:
            said = reason.value if reason is not None else "no reason given"
            raise CertificateError(f"certificate revoked on {entry.revocation_date_utc:%Y-%m-%dT%H:%M:%SZ} "
                                   f"({said}): {describe(cert)}")


def _reason(entry: x509.RevokedCertificate) -> ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


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


@lru_cache(maxsize=256)
def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Cached: a certificate's signature never changes, and every record of a signer asks it again
    (certificates compare and hash by their DER bytes)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class TrustStore:
    """The roots a verifier accepts, indexed by subject for the path search, and the CRLs it checks.

    A CRL is looked up by the name of the certificate's issuer and counts only when that issuer
    signed it; an issuer without a CRL here is not checked for revocation.
    """

    def __init__(self, roots: Iterable[x509.Certificate],
                 crls: Iterable[x509.CertificateRevocationList] = ()) -> None:
        self.roots = list(roots)
        self.crls = list(crls)
        self._crls_by_issuer: dict[x509.Name, list[x509.CertificateRevocationList]] = defaultdict(list)
        for crl in self.crls:
            self._crls_by_issuer[crl.issuer].append(crl)
        if not self.roots:
            raise ValueError("a trust store needs at least one root certificate")
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = defaultdict(list)
        for root in self.roots:
            self._by_subject[root.subject].append(root)
        self._fingerprints = {fingerprint(root) for root in self.roots}

    @classmethod
    def from_pem_files(cls, paths: Iterable[Path], crl_files: Iterable[Path] = ()) -> "TrustStore":
        """Each file may hold several PEM certificates (a CA bundle); each CRL file one PEM CRL."""
        return cls((cert for path in paths for cert in x509.load_pem_x509_certificates(Path(path).read_bytes())),
                   (x509.load_pem_x509_crl(Path(path).read_bytes()) for path in crl_files))

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
                check_revocation(cert, root, self._crls_by_issuer.get(cert.issuer, ()), at)
                return leaf
            if position + 1 == len(chain):
                break
            if not _issued_by(cert, chain[position + 1]):
                raise CertificateError(f"broken chain: {cert.subject.rfc4514_string()} "
                                       "is not signed by the next certificate")
            check_revocation(cert, chain[position + 1], self._crls_by_issuer.get(cert.issuer, ()), at)
        raise CertificateError(f"untrusted chain: no trusted root issued {chain[-1].issuer.rfc4514_string()}")

    def _trusted_issuer(self, cert: x509.Certificate) -> x509.Certificate | None:
        return next((root for root in self._by_subject.get(cert.issuer, ()) if _issued_by(cert, root)), None)
