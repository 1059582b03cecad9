"""Detached CMS signatures (RFC 5652, DER) that ``openssl cms -verify`` checks as they are.

Used for what the platform itself vouches for (run manifests), where the verifier is an auditor
with standard tools rather than the portal. Verification here runs that same ``openssl cms``
command: cryptography can build CMS SignedData but has no API to verify it, and a hand-written
CMS parser (signed attributes, message digest, certificate path) would be the riskiest code in
the project; calling openssl makes our verdict and the auditor's the same by construction.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.hazmat.primitives.serialization.pkcs7 import PKCS7PrivateKeyTypes


class CmsError(ValueError):
    """A signature that does not verify, with openssl's reason."""


def sign_detached(data: bytes, key: PKCS7PrivateKeyTypes, chain: Sequence[x509.Certificate]) -> bytes:
    """SignedData over ``data`` (not embedded), with the chain (leaf first), SHA-256, DER."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(chain[0], key, hashes.SHA256())
    for cert in chain[1:]:
        builder = builder.add_certificate(cert)
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])


def verify_detached(signature: bytes, data: bytes, ca_file: Path, at: dt.datetime | None = None) -> x509.Certificate:
    """The signer's certificate when ``signature`` is a valid signature over ``data`` by a
    certificate that chains to ``ca_file``; raises :class:`CmsError` otherwise.

    ``at`` is when the chain is judged (openssl's ``-attime``): the proven signing time, a time
    stamp's, so that a manifest signed while the platform certificate was valid stays valid after
    it expires (the time rule in lienthong.signing.trust). None judges it now.
    """
    with tempfile.TemporaryDirectory(prefix="lienthong-cms-") as tmp:
        sig, content, signer = Path(tmp, "sig.p7s"), Path(tmp, "content"), Path(tmp, "signer.pem")
        sig.write_bytes(signature)
        content.write_bytes(data)
        done = subprocess.run(
            ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(sig), "-content", str(content),
             "-CAfile", str(ca_file), "-purpose", "any", "-signer", str(signer), "-out", "/dev/null",
             *(["-attime", str(int(at.timestamp()))] if at is not None else [])],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise CmsError(_reason(done.stderr))
        return x509.load_pem_x509_certificates(signer.read_bytes())[0]


def _reason(stderr: str) -> str:
    """openssl's last meaningful line, e.g. 'digest failure' or 'certificate verify error'."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "openssl cms -verify failed"
