"""RFC 3161 time-stamps on run manifests: asking a TSA for one, and checking one later.

The platform's signature on a manifest says who; the token says when, on a clock the platform
does not control. ``stamp`` keeps the whole TimeStampResp (what openssl calls a ``.tsr``), so an
auditor can run ``openssl ts -verify -in run.tsr -data manifest -CAfile tsa-ca.pem`` on the
export without this code. ``verify`` makes the same checks here, each failure named, so the
ledger can say which link broke (data changed, wrong TSA, forged signature) rather than "invalid".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from pathlib import Path
from typing import Any

import requests
from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from lienthong.connectors import connection
from lienthong.connectors.connection import base_url, get_connection
from lienthong.connectors.soap import is_transient
from lienthong.signing.rfc3161 import TimeStampResp
from lienthong.signing.trust import CertificateError, TrustStore

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
MAX_ATTEMPTS = 5
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


class TimestampError(Exception):
    """A token that is not what it claims, or no token at all; the message names the check."""


class TsaUnavailable(TimestampError):
    """The TSA could not be reached or kept failing: the manifest is fine, its date is missing."""


def stamp(data: bytes, conn_id: str = connection.TSA) -> bytes:
    """The TSA's DER TimeStampResp for the SHA-256 of ``data``, checked to answer this request."""
    conn = get_connection(conn_id)
    extra = conn.extra_dejson
    url = base_url(conn) + extra.get("path", "/tsa")
    nonce = secrets.randbits(63)
    query = tsp.TimeStampReq({
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                            "hashed_message": hashlib.sha256(data).digest()},
        "nonce": nonce,
        "cert_req": True,
    }).dump()
    retrying = Retrying(stop=stop_after_attempt(int(extra.get("max_attempts", MAX_ATTEMPTS))),
                        wait=wait_random_exponential(multiplier=0.2, max=4),
                        retry=retry_if_exception(is_transient), reraise=True)
    try:
        answer = retrying(_post, url, query, float(extra.get("timeout", 10)))
    except requests.RequestException as exc:
        raise TsaUnavailable(f"request to the TSA at {url} failed: {exc}") from exc
    info = _token(answer)[2]
    if info["nonce"].native != nonce:
        raise TimestampError("nonce mismatch: the TSA's answer is not for this request")
    _check_imprint(info, data)
    return answer


def verify(response: bytes, data: bytes, ca_file: Path) -> dt.datetime:
    """When the TSA saw ``data``: genTime, once every check of the token passes."""
    signed_data, content, info = _token(response)
    _check_imprint(info, data)
    if len(signed_data["signer_infos"]) != 1:
        raise TimestampError(f"token has {len(signed_data['signer_infos'])} signers, expected exactly one")
    signer = signed_data["signer_infos"][0]
    attrs = _signed_attributes(signer)
    if attrs.get("content_type") != "tst_info":
        raise TimestampError("signed content-type attribute is not id-ct-TSTInfo")
    if attrs.get("message_digest") != _digest(signer["digest_algorithm"]["algorithm"].native, content):
        raise TimestampError("message-digest attribute does not match the TSTInfo: the token content was altered")
    cert = _signer_certificate(signed_data, signer)
    crypto_cert = x509.load_der_x509_certificate(cert.dump())
    _check_signature(crypto_cert, signer)
    _check_ess(attrs, cert)
    _check_time_stamping_use(crypto_cert)
    gen_time = info["gen_time"].native
    try:
        trust = TrustStore.from_pem_files([ca_file])
    except (OSError, ValueError) as exc:
        raise TimestampError(f"cannot read TSA CA file {ca_file}: {exc}") from exc
    others = [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed_data["certificates"] or []
              if c.name == "certificate" and c.chosen.dump() != cert.dump()]
    try:
        trust.verify_chain([crypto_cert, *others], gen_time)
    except CertificateError as exc:
        raise TimestampError(f"TSA certificate does not chain to {ca_file}: {exc}") from exc
    return gen_time


def ca_file(conn_id: str = connection.TSA) -> Path:
    """The CA the TSA's tokens chain to: the connection's ``extra.ca_file`` where the TSA
    connection is configured, else the settings' trust anchor (an auditor's machine has no
    connections)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from lienthong.settings import settings

    try:
        path = get_connection(conn_id).extra_dejson.get("ca_file")
    except AirflowNotFoundException:
        path = None
    return Path(path) if path else settings().tsa_ca_file


def _post(url: str, query: bytes, timeout: float) -> bytes:
    answer = requests.post(url, data=query, headers={"Content-Type": QUERY_TYPE}, timeout=timeout)
    answer.raise_for_status()
    if answer.headers.get("Content-Type", "").split(";")[0].strip() != REPLY_TYPE:
        raise TimestampError(f"TSA answered {answer.headers.get('Content-Type')!r}, not {REPLY_TYPE}")
    return answer.content


def _token(response: bytes) -> tuple[cms.SignedData, bytes, tsp.TSTInfo]:
    """(SignedData, DER TSTInfo, TSTInfo) of a granted response; anything else is an error."""
    try:
        parsed = TimeStampResp.load(response, strict=True)
        status = parsed["status"]
        if status["status"].native not in ("granted", "granted_with_mods"):
            reason = "; ".join(status["status_string"].native or []) or "no reason given"
            raise TimestampError(f"TSA refused: status {status['status'].native} "
                                 f"({reason}; failInfo {sorted(status['fail_info'].native or ())})")
        token = parsed["time_stamp_token"]
        if not token:
            raise TimestampError("TSA granted the request but sent no time-stamp token")
        if token["content_type"].native != "signed_data":
            raise TimestampError("time-stamp token is not CMS SignedData")
        signed_data = token["content"]
        encap = signed_data["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            raise TimestampError("signed content is not a TSTInfo")
        content = encap["content"].contents
        info = tsp.TSTInfo.load(content, strict=True)
        info.native  # asn1crypto parses lazily; malformed inner DER must fail here, not later
        return signed_data, content, info
    except (ValueError, TypeError, KeyError) as exc:
        raise TimestampError(f"not a DER TimeStampResp: {exc}") from exc


def _check_imprint(info: tsp.TSTInfo, data: bytes) -> None:
    imprint = info["message_imprint"]
    algorithm = imprint["hash_algorithm"]["algorithm"].native
    if imprint["hashed_message"].native != _digest(algorithm, data):
        raise TimestampError(f"message imprint ({algorithm}) does not match the data: "
                             "the data is not what was time-stamped")


def _digest(algorithm: str, data: bytes) -> bytes:
    if algorithm not in _HASHES:
        raise TimestampError(f"unsupported digest algorithm {algorithm}")
    return hashlib.new(algorithm, data).digest()


def _signed_attributes(signer: cms.SignerInfo) -> dict[str, Any]:
    """Single-valued signed attributes by name; a repeated attribute is a forgery attempt."""
    if not signer["signed_attrs"]:
        raise TimestampError("signer has no signed attributes")
    attrs: dict[str, Any] = {}
    for attr in signer["signed_attrs"]:
        name = attr["type"].native
        if name in attrs or len(attr["values"]) != 1:
            raise TimestampError(f"signed attribute {name} is repeated or multi-valued")
        attrs[name] = attr["values"][0].native
    return attrs


def _signer_certificate(signed_data: cms.SignedData, signer: cms.SignerInfo) -> asn1_x509.Certificate:
    sid = signer["sid"]
    for choice in signed_data["certificates"] or []:
        cert = choice.chosen
        if choice.name != "certificate":
            continue
        if sid.name == "issuer_and_serial_number":
            if (cert.issuer == sid.chosen["issuer"]
                    and cert.serial_number == sid.chosen["serial_number"].native):
                return cert
        elif cert.key_identifier == sid.chosen.native:
            return cert
    raise TimestampError("token carries no certificate for its signer (was certReq false?)")


def _check_signature(cert: x509.Certificate, signer: cms.SignerInfo) -> None:
    """The signature is over the DER SET OF the signed attributes (RFC 5652 5.4), as received."""
    signed = b"\x31" + signer["signed_attrs"].dump()[1:]
    algorithm = signer["digest_algorithm"]["algorithm"].native
    if algorithm not in _HASHES:
        raise TimestampError(f"unsupported digest algorithm {algorithm}")
    hash_algorithm = _HASHES[algorithm]()
    kind = signer["signature_algorithm"].signature_algo
    key = cert.public_key()
    signature = signer["signature"].native
    try:
        if kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, signed, ec.ECDSA(hash_algorithm))
        elif kind == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), hash_algorithm)
        else:
            raise TimestampError(f"unsupported signature algorithm {kind} for a {type(key).__name__}")
    except InvalidSignature as exc:
        raise TimestampError("CMS signature over the signed attributes is invalid") from exc


def _check_ess(attrs: dict[str, Any], cert: asn1_x509.Certificate) -> None:
    """signingCertificate(V2) binds the signature to this certificate, not just to its key."""
    if "signing_certificate_v2" in attrs:
        first = attrs["signing_certificate_v2"]["certs"][0]
        algorithm = first["hash_algorithm"]["algorithm"]
    elif "signing_certificate" in attrs:
        first, algorithm = attrs["signing_certificate"]["certs"][0], "sha1"
    else:
        raise TimestampError("signed attributes lack signingCertificateV2 (ESSCertIDv2)")
    if first["cert_hash"] != hashlib.new(algorithm, cert.dump()).digest():
        raise TimestampError("signingCertificateV2 does not name the certificate that signed the token")


def _check_time_stamping_use(cert: x509.Certificate) -> None:
    """RFC 3161 2.3: one critical extendedKeyUsage with timeStamping as its only purpose."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        raise TimestampError("TSA certificate has no extendedKeyUsage (timeStamping required)") from None
    if not eku.critical or list(eku.value) != [ExtendedKeyUsageOID.TIME_STAMPING]:
        raise TimestampError("TSA certificate's extendedKeyUsage must be critical and timeStamping only")
