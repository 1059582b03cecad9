"""Sandbox keys, detached JWS with x5c, the trust store and sealed records."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import stat
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from lienthong.signing.canonical import canonical_json, content_hash
from lienthong.signing.jws import SignatureError, Signer, verify_detached
from lienthong.signing.keys import (
    KeyPaths,
    agency_subject,
    init_keys,
    issue_certificate,
    load_signer,
    load_trust_store,
)
from lienthong.signing import records
from lienthong.signing.records import seal, seal_batch, unseal, version_of
from tests.sealing import sealed_as_given
from lienthong.signing.trust import TrustStore

PAYLOAD = canonical_json({"MaHoSo": "H12.99-250101-000001", "TrangThaiHoSo": 2})
NOW = dt.datetime.now(dt.timezone.utc)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def header_of(token: str) -> dict:
    segment = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@pytest.fixture(scope="module")
def ca(keys: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    paths = KeyPaths.in_dir(keys)
    return (x509.load_pem_x509_certificate(paths.ca_cert.read_bytes()),
            serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None))


def signer_issued_by(ca: tuple, key=None, **validity) -> Signer:
    ca_cert, ca_key = ca
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(agency_subject("000.00.12.H12", "Sở Tư pháp"), key.public_key(), ca_key, ca_cert,
                             **validity)
    return Signer(key, [cert])


# --- keys -----------------------------------------------------------------------------------


def test_init_keys_builds_a_sandbox_ca_and_an_agency_certificate(tmp_path: Path) -> None:
    paths = init_keys(tmp_path / "keys", "000.00.12.H12", "Sở Tư pháp tỉnh thử nghiệm")

    assert stat.S_IMODE(paths.agency_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    agency = x509.load_pem_x509_certificate(paths.agency_cert.read_bytes())
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    ca.verify_directly_issued_by(ca)
    agency.verify_directly_issued_by(ca)
    usage = agency.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and not usage.key_cert_sign
    assert agency.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value == "000.00.12.H12"
    assert agency.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Sở Tư pháp tỉnh thử nghiệm"
    lifetime = agency.not_valid_after_utc - agency.not_valid_before_utc
    assert dt.timedelta(days=700) < lifetime < dt.timedelta(days=750)


def test_init_keys_keeps_existing_keys_unless_forced(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    files = [paths.ca_cert, paths.ca_key, paths.agency_key, paths.agency_cert]
    before = [path.read_bytes() for path in files]

    assert init_keys(tmp_path) == paths
    assert [path.read_bytes() for path in files] == before

    init_keys(tmp_path, force=True)
    assert all(path.read_bytes() != old for path, old in zip(files, before))
    assert stat.S_IMODE(paths.agency_key.stat().st_mode) == 0o600


def test_init_keys_issues_a_missing_agency_key_from_the_existing_ca(tmp_path: Path) -> None:
    paths = init_keys(tmp_path)
    ca_pem = paths.ca_cert.read_bytes()
    paths.agency_key.unlink()

    init_keys(tmp_path)

    assert paths.ca_cert.read_bytes() == ca_pem
    # Checked now, not at the module's NOW: the new certificate is younger than the test session.
    load_trust_store(tmp_path).verify_chain(load_signer(tmp_path).chain, dt.datetime.now(dt.timezone.utc))


# --- detached JWS ---------------------------------------------------------------------------


def test_sign_and_verify_round_trip(signer: Signer, trust: TrustStore) -> None:
    token = signer.sign(PAYLOAD)

    header_segment, payload_segment, signature_segment = token.split(".")
    assert payload_segment == "" and signature_segment
    header = header_of(token)
    assert header["alg"] == "ES256"
    assert "b64" not in header and "crit" not in header and "typ" not in header
    leaf_der = base64.b64decode(header["x5c"][0])
    assert leaf_der == signer.certificate.public_bytes(serialization.Encoding.DER)
    assert header["x5t#S256"] == b64url(hashlib.sha256(leaf_der).digest())
    assert verify_detached(token, PAYLOAD, trust) == signer.certificate


def test_detached_signature_verifies_with_plain_pyjwt(signer: Signer) -> None:
    header, _, signature = signer.sign(PAYLOAD).split(".")
    attached = f"{header}.{b64url(PAYLOAD)}.{signature}"

    assert jwt.api_jws.decode(attached, key=signer.certificate.public_key(), algorithms=["ES256"]) == PAYLOAD


def test_tampered_payload_is_refused(signer: Signer, trust: TrustStore) -> None:
    token = signer.sign(PAYLOAD)

    with pytest.raises(SignatureError, match="bad signature") as caught:
        verify_detached(token, PAYLOAD.replace(b'"TrangThaiHoSo":2', b'"TrangThaiHoSo":9'), trust)
    assert caught.value.status == "signature_invalid"


def test_a_chain_from_another_ca_is_untrusted(tmp_path: Path, trust: TrustStore) -> None:
    init_keys(tmp_path)
    stranger = load_signer(tmp_path)

    with pytest.raises(SignatureError, match="untrusted chain") as caught:
        verify_detached(stranger.sign(PAYLOAD), PAYLOAD, trust)
    assert caught.value.status == "certificate_untrusted"


@pytest.mark.parametrize(
    ("validity", "reason"),
    [
        ({"valid_from": NOW - dt.timedelta(days=1100), "valid_for": dt.timedelta(days=365)}, "expired"),
        ({"valid_from": NOW + dt.timedelta(days=1), "valid_for": dt.timedelta(days=365)}, "not yet valid"),
    ],
)
def test_certificate_validity_is_enforced(ca: tuple, trust: TrustStore, validity: dict, reason: str) -> None:
    signer = signer_issued_by(ca, **validity)

    with pytest.raises(SignatureError, match=reason) as caught:
        verify_detached(signer.sign(PAYLOAD), PAYLOAD, trust)
    assert caught.value.status == "certificate_untrusted"


def test_validity_is_judged_at_the_time_asked(signer: Signer, trust: TrustStore) -> None:
    token = signer.sign(PAYLOAD)

    with pytest.raises(SignatureError, match="expired"):
        verify_detached(token, PAYLOAD, trust, at=NOW + dt.timedelta(days=800))


def test_intermediates_in_x5c_lead_to_the_root(ca: tuple, trust: TrustStore) -> None:
    ca_cert, ca_key = ca
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA trung gian / intermediate")])
    sub_cert = issue_certificate(sub_name, sub_key.public_key(), ca_key, ca_cert, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_certificate(agency_subject("000.00.12.H12", "Sở Tư pháp"), leaf_key.public_key(), sub_key, sub_cert)

    assert verify_detached(Signer(leaf_key, [leaf, sub_cert]).sign(PAYLOAD), PAYLOAD, trust) == leaf
    with pytest.raises(SignatureError, match="untrusted chain"):
        verify_detached(Signer(leaf_key, [leaf]).sign(PAYLOAD), PAYLOAD, trust)


def test_a_certificate_not_for_signatures_is_refused(ca: tuple, trust: TrustStore) -> None:
    ca_cert, ca_key = ca

    with pytest.raises(SignatureError, match="key usage") as caught:
        verify_detached(Signer(ca_key, [ca_cert]).sign(PAYLOAD), PAYLOAD, trust)
    assert caught.value.status == "certificate_untrusted"


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_unsigned_and_symmetric_algorithms_are_refused(signer: Signer, trust: TrustStore, alg: str) -> None:
    header = {**header_of(signer.sign(PAYLOAD)), "alg": alg}
    header_segment = b64url(json.dumps(header).encode())
    signing_input = f"{header_segment}.{b64url(PAYLOAD)}".encode()
    # The key-confusion forgery: HMAC keyed with the public certificate anyone can read.
    public_pem = signer.certificate.public_bytes(serialization.Encoding.PEM)
    signature = b64url(hmac.new(public_pem, signing_input, hashlib.sha256).digest()) if alg == "HS256" else ""

    with pytest.raises(SignatureError, match="algorithm not allowed"):
        verify_detached(f"{header_segment}..{signature}", PAYLOAD, trust)


def test_the_algorithm_must_fit_the_certificate_key(signer: Signer, trust: TrustStore) -> None:
    token = signer.sign(PAYLOAD)
    header = b64url(json.dumps({**header_of(token), "alg": "ES384"}).encode())

    with pytest.raises(SignatureError, match="does not match the certificate key"):
        verify_detached(f"{header}..{token.split('.')[2]}", PAYLOAD, trust)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "e30..c2ln", "!!!..c2ln"])
def test_malformed_tokens_are_refused(trust: TrustStore, token: str) -> None:
    with pytest.raises(SignatureError, match="malformed|algorithm not allowed"):
        verify_detached(token, PAYLOAD, trust)


@pytest.mark.parametrize(("algorithm", "expected"), [(None, "RS256"), ("PS256", "PS256")])
def test_rsa_keys_sign_rs256_or_ps256(ca: tuple, trust: TrustStore, algorithm: str | None, expected: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_signer = Signer(key, signer_issued_by(ca, key=key).chain, algorithm)

    token = rsa_signer.sign(PAYLOAD)

    assert header_of(token)["alg"] == expected
    assert verify_detached(token, PAYLOAD, trust) == rsa_signer.certificate


def test_a_signer_refuses_a_key_that_is_not_its_certificates(signer: Signer) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        Signer(ec.generate_private_key(ec.SECP256R1()), signer.chain)


def test_trust_store_reads_pem_bundles(tmp_path: Path, keys: Path) -> None:
    other = tmp_path / "other"
    init_keys(other)
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(KeyPaths.in_dir(keys).ca_cert.read_bytes() + KeyPaths.in_dir(other).ca_cert.read_bytes())

    store = TrustStore.from_pem_files([bundle])

    assert len(store.roots) == 2
    verify_detached(load_signer(other).sign(PAYLOAD), PAYLOAD, store)


# --- sealed records -------------------------------------------------------------------------

RECORD = {"MaHoSo": "H12.99-250101-000001", "MaTTHC": "1.001612", "TrangThaiHoSo": 2, "GhiChu": None}


def test_seal_and_unseal(signer: Signer, trust: TrustStore) -> None:
    sealed = seal(RECORD, signer)

    assert sealed["PhienBan"] == content_hash(RECORD) == version_of(sealed)
    assert {key: sealed[key] for key in RECORD} == RECORD
    assert unseal(sealed, trust) == (RECORD, signer.certificate)
    assert seal(sealed, signer)["PhienBan"] == sealed["PhienBan"]


def test_unseal_refuses_a_record_changed_after_sealing(signer: Signer, trust: TrustStore) -> None:
    tampered = {**seal(RECORD, signer), "TrangThaiHoSo": 9}

    with pytest.raises(SignatureError, match="bad signature") as caught:
        unseal(tampered, trust)
    assert caught.value.status == "signature_invalid"


def test_unseal_tells_a_wrong_version_from_tampering(signer: Signer, trust: TrustStore) -> None:
    wrong = {**RECORD, "PhienBan": "0" * 64}
    record = sealed_as_given(wrong, signer)

    with pytest.raises(SignatureError, match="version mismatch") as caught:
        unseal(record, trust)
    assert caught.value.status == "version_mismatch"


def test_unseal_refuses_a_record_without_signature(trust: TrustStore) -> None:
    with pytest.raises(SignatureError, match="malformed"):
        unseal({**RECORD, "PhienBan": content_hash(RECORD)}, trust)


# --- sealed batches -------------------------------------------------------------------------

def _batch(size: int) -> list[dict]:
    return [{**RECORD, "MaHoSo": f"H12.99-250101-{i:06d}", "TrangThaiHoSo": 1 + i % 10} for i in range(size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_every_record_of_a_sealed_batch_verifies_on_its_own(signer: Signer, trust: TrustStore, size: int) -> None:
    payloads = _batch(size)
    sealed = seal_batch(payloads, signer)

    assert len({record["ChuKySo"] for record in sealed}) == 1
    assert [record["BangChung"]["index"] for record in sealed] == list(range(size))
    for payload, record in zip(payloads, sealed):
        assert record["PhienBan"] == version_of(payload)
        assert unseal(record, trust) == (payload, signer.certificate)  # no other record of the batch needed


def test_an_unsealer_checks_a_batch_signature_once(signer: Signer, trust: TrustStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[bytes] = []

    def counting(jws: str, payload: bytes, *args: object) -> x509.Certificate:
        checked.append(payload)
        return verify_detached(jws, payload, *args)

    monkeypatch.setattr(records, "verify_detached", counting)
    unsealer = records.Unsealer(trust)
    first, second = seal_batch(_batch(5), signer), seal_batch(_batch(3), signer)

    assert [unsealer(record)[1] for record in [*first, *second]] == [signer.certificate] * 8
    assert len(checked) == 2
    with pytest.raises(SignatureError, match="bad signature"):  # a record moved into the first batch
        unsealer({**second[1], "ChuKySo": first[0]["ChuKySo"]})
    assert len(checked) == 3


def test_a_third_party_verifies_a_batch_member_with_hashlib_and_pyjwt(signer: Signer) -> None:
    """What an auditor does without this project: RFC 6962 hashing by hand, then any JWS library
    over the tree head the path leads to."""
    record = seal_batch(_batch(3), signer)[2]
    proof = record["BangChung"]
    leaf = hashlib.sha256(b"\x00" + canonical_json({k: v for k, v in record.items()
                                                     if k not in ("BangChung", "ChuKySo")})).digest()
    (sibling,) = proof["path"]  # leaf 2 of 3: its one sibling is the node over leaves 0 and 1
    root = hashlib.sha256(b"\x01" + bytes.fromhex(sibling) + leaf).digest()
    head = json.dumps({"algorithm": "RFC6962-SHA256", "root": root.hex(), "size": proof["size"]},
                      separators=(",", ":"), sort_keys=True).encode()
    header, _, signature = record["ChuKySo"].split(".")

    assert proof == {"index": 2, "size": 3, "path": [sibling]}
    assert jwt.api_jws.decode(f"{header}.{b64url(head)}.{signature}", key=signer.certificate.public_key(),
                              algorithms=["ES256"]) == head
