"""A time-stamping authority (RFC 3161) for the sandbox, so run manifests get a third party's date.

A manifest signed by the platform proves who wrote it, not when: the platform's own clock is the
one thing an auditor must not have to trust. A TSA countersigns a hash with its own time, and
``openssl ts -verify`` checks the answer with nothing but the TSA's CA file. The sandbox TSA is
its own small PKI (a root and a TSA certificate whose only, critical, purpose is timeStamping),
made on first start under ``<data_dir>/tsa/`` and kept, as tokens already issued refer to it.

Requests and answers are DER through asn1crypto's RFC 3161 and CMS types; the signature itself
is cryptography's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from werkzeug.wrappers import Request, Response

from lienthong.logs import get_logger
from lienthong.sandbox.faults import FaultConfig, FaultSwitch
from lienthong.signing.keys import CA_VALIDITY, _write, _write_key, issue_certificate
from lienthong.signing.rfc3161 import TimeStampResp

log = get_logger(__name__)

PATH = "/tsa"
QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
# The sandbox's TSA policy, under the UUID arc (2.25) that anyone may use without registration.
POLICY = "2.25.171089357466512335946310418417930858313"
# Imprints the TSA accepts: a SHA-1 imprint no longer fixes the document it claims to.
ACCEPTED_HASHES = {"sha256": 32, "sha384": 48, "sha512": 64}
TSA_VALIDITY = dt.timedelta(days=1825)
MAX_QUERY = 64 * 1024


@dataclass(frozen=True)
class TsaFiles:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, tsa_dir: Path) -> "TsaFiles":
        return cls(tsa_dir / "tsa-ca.pem", tsa_dir / "tsa-ca.key.pem", tsa_dir / "tsa.pem", tsa_dir / "tsa.key.pem")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lienthong sandbox"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def init_tsa(tsa_dir: Path) -> TsaFiles:
    """The TSA's root and its time-stamping certificate, made once and kept."""
    files = TsaFiles.in_dir(tsa_dir)
    if all(path.exists() for path in (files.ca_cert, files.ca_key, files.cert, files.key)):
        return files
    tsa_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue_certificate(_name("lienthong sandbox TSA CA"), ca_key.public_key(), ca_key, ca=True,
                                valid_for=CA_VALIDITY)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(_name("lienthong sandbox TSA"), key.public_key(), ca_key, ca_cert, valid_for=TSA_VALIDITY,
                             extended_key_usage=[ExtendedKeyUsageOID.TIME_STAMPING])
    _write_key(files.ca_key, ca_key)
    _write_key(files.key, key)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))  # last: its presence means "done"
    log.info("sandbox TSA keys created in %s", tsa_dir)
    return files


class Rejected(Exception):
    """A request the TSA answers with status rejection and this PKIFailureInfo bit."""

    def __init__(self, fail_info: str, message: str) -> None:
        super().__init__(message)
        self.fail_info = fail_info


class Authority:
    """Turns a TimeStampReq into a TimeStampResp, signed with the TSA key."""

    def __init__(self, files: TsaFiles) -> None:
        self._key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        if not isinstance(self._key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{files.key}: the sandbox TSA signs with an EC key")
        cert_der = x509.load_pem_x509_certificate(files.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
        self._cert = asn1_x509.Certificate.load(cert_der)
        self._cert_hash = hashlib.sha256(cert_der).digest()
        self._serial_lock = threading.Lock()
        self._last_serial = 0

    def respond(self, query: bytes) -> bytes:
        try:
            request = _parse(query)
            return self._grant(request).dump()
        except Rejected as refusal:
            log.info("time-stamp request rejected: %s", refusal)
            return TimeStampResp({"status": {"status": "rejection", "status_string": [str(refusal)],
                                             "fail_info": {refusal.fail_info}}}).dump()

    def _grant(self, request: tsp.TimeStampReq) -> TimeStampResp:
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        info: dict[str, Any] = {
            "version": "v1", "policy": POLICY, "message_imprint": request["message_imprint"],
            "serial_number": self._serial(now), "gen_time": now, "accuracy": {"seconds": 1},
            "tsa": asn1_x509.GeneralName(name="directory_name", value=self._cert.subject),
        }
        if request["nonce"].native is not None:
            info["nonce"] = request["nonce"].native
        tst_info = tsp.TSTInfo(info).dump()
        signed_attrs = cms.CMSAttributes([
            {"type": "content_type", "values": ["tst_info"]},
            {"type": "message_digest", "values": [hashlib.sha256(tst_info).digest()]},
            {"type": "signing_certificate_v2", "values": [{"certs": [{
                "cert_hash": self._cert_hash,
                "issuer_serial": {"issuer": [asn1_x509.GeneralName(name="directory_name", value=self._cert.issuer)],
                                  "serial_number": self._cert.serial_number},
            }]}]},
        ])
        signature = self._key.sign(signed_attrs.dump(), ec.ECDSA(hashes.SHA256()))
        signer = cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value={
                "issuer": self._cert.issuer, "serial_number": self._cert.serial_number}),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "signed_attrs": signed_attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
            "signature": signature,
        })
        signed_data = cms.SignedData({
            "version": "v3",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {"content_type": "tst_info", "content": core.ParsableOctetString(tst_info)},
            "signer_infos": [signer],
            **({"certificates": [self._cert]} if request["cert_req"].native else {}),
        })
        return TimeStampResp({"status": {"status": "granted"},
                              "time_stamp_token": {"content_type": "signed_data", "content": signed_data}})

    def _serial(self, now: dt.datetime) -> int:
        """Unique and increasing across restarts: microseconds since the epoch, bumped on a tie."""
        with self._serial_lock:
            self._last_serial = max(self._last_serial + 1, int(now.timestamp() * 1_000_000))
            return self._last_serial


def _parse(query: bytes) -> tsp.TimeStampReq:
    """The request, or :class:`Rejected` saying which rule it breaks."""
    try:
        request = tsp.TimeStampReq.load(query, strict=True)
        request.native  # asn1crypto parses lazily: force it so that bad DER is caught here
    except (ValueError, TypeError) as exc:
        raise Rejected("bad_data_format", f"not a DER TimeStampReq: {exc}") from exc
    if request["version"].native != "v1":
        raise Rejected("bad_request", "only TimeStampReq version 1 is known")
    imprint = request["message_imprint"]
    algorithm = imprint["hash_algorithm"]["algorithm"].native
    if ACCEPTED_HASHES.get(algorithm) != len(imprint["hashed_message"].native):
        raise Rejected("bad_alg", f"message imprint must be SHA-256, SHA-384 or SHA-512 (got {algorithm})")
    if request["req_policy"].native not in (None, POLICY):
        raise Rejected("unaccepted_policy", f"this TSA issues under policy {POLICY} only")
    if request["extensions"].native:
        raise Rejected("unaccepted_extensions", "no request extensions are supported")
    return request


class _QueryRequest(Request):
    """A query is a hash and a few integers: anything large is not one (413)."""

    max_content_length = MAX_QUERY


class TsaApp:
    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self._dispatch(_QueryRequest(environ))(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        if request.path != PATH:
            return Response("not found", status=404)
        if request.method != "POST":
            return Response("POST a time-stamp query", status=405, headers={"Allow": "POST"})
        if request.mimetype != QUERY_TYPE:
            return Response(f"Content-Type must be {QUERY_TYPE}", status=415)
        return Response(self.authority.respond(request.get_data()), mimetype=REPLY_TYPE)


def create_app(data_dir: Path, faults: FaultConfig | None = None) -> FaultSwitch:
    """The TSA behind its fault switch; keys are made in ``<data_dir>/tsa/`` on first start."""
    return FaultSwitch(TsaApp(Authority(init_tsa(data_dir / "tsa"))), faults)
