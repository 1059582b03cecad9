"""Revocation through the sandbox CA's CRL, and a key rotation judged by the time rule in trust.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from lienthong.audit.timestamp import ca_file, stamp, verify
from lienthong.cli import app
from lienthong.connectors import connection
from lienthong.sandbox import services
from lienthong.settings import Settings
from lienthong.signing.jws import CERTIFICATE_UNTRUSTED, SignatureError, Signer
from lienthong.signing.keys import (
    CRL_VALIDITY,
    KeyPaths,
    agency_subject,
    certify,
    init_keys,
    issue_certificate,
    load_signer,
    load_trust_store,
    revoke,
)
from lienthong.signing.records import seal, unseal
from tests.test_portal_rest import dossier, portal, sink_for

NOW = dt.datetime.now(dt.timezone.utc)
SUBJECT = agency_subject("000.00.12.H12", "Sở Tư pháp")


def new_signer(keys: Path, **validity: dt.datetime | dt.timedelta) -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    return Signer(key, [certify(keys, SUBJECT, key.public_key(), **validity)])


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CA of the test's own: revocations write its CRL."""
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    init_keys(Settings.from_env().keys_dir)
    return Settings.from_env().keys_dir


def test_the_portal_refuses_a_record_signed_by_a_revoked_certificate_naming_serial_and_record(
        keys: Path, tmp_path: Path) -> None:
    revoked, other = load_signer(keys), new_signer(keys)
    serial = f"{revoked.certificate.serial_number:x}"

    result = CliRunner().invoke(app, ["keys", "revoke", "agency", "--reason", "key-compromise"])
    assert result.exit_code == 0, result.output
    assert KeyPaths.in_dir(keys).crl.exists()

    batch = [seal(dossier(1), revoked), seal(dossier(2), other)]
    with portal(tmp_path / "portal.db", load_trust_store(keys)) as server, sink_for(server.url) as sink:
        acks = sink.push(batch)
    assert [a.error_code for a in acks] == [11, 0]  # the other record of the batch still goes through
    assert acks[0].status == CERTIFICATE_UNTRUSTED
    assert "revoked" in acks[0].message and f"serial {serial}" in acks[0].message
    assert "keyCompromise" in acks[0].message
    assert acks[0].MaHoSo == dossier(1)["MaHoSo"]


def test_a_crl_the_ca_did_not_sign_is_ignored_and_a_stale_one_refused(keys: Path) -> None:
    signer = load_signer(keys)
    record = seal(dossier(1), signer)
    ca = x509.load_pem_x509_certificate(KeyPaths.in_dir(keys).ca_cert.read_bytes())
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
              .last_update(NOW).next_update(NOW + dt.timedelta(days=1))
              .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(
                  signer.certificate.serial_number).revocation_date(NOW).build())
              .sign(forger, hashes.SHA256()))
    trust = load_trust_store(keys)
    assert unseal(record, type(trust)(trust.roots, [forged]))[1] == signer.certificate

    revoke(keys, 12345)  # someone else's certificate: the CRL exists, ours is not on it
    trust = load_trust_store(keys)
    assert unseal(record, trust)[1] == signer.certificate
    with pytest.raises(SignatureError, match=f"CRL .* out of date.*serial {signer.certificate.serial_number:x}"):
        unseal(record, trust, at=NOW + CRL_VALIDITY + dt.timedelta(days=1))
    assert CliRunner().invoke(app, ["keys", "crl"]).exit_code == 0  # renewal keeps the revocation
    assert [e.serial_number for e in load_trust_store(keys).crls[0]] == [12345]


def test_expired_and_not_yet_valid_certificates_name_their_serial(keys: Path) -> None:
    for validity, reason in (({"valid_from": NOW - dt.timedelta(days=10), "valid_for": dt.timedelta(days=1)},
                              "certificate expired"),
                             ({"valid_from": NOW + dt.timedelta(days=1)}, "certificate not yet valid")):
        signer = new_signer(keys, **validity)
        with pytest.raises(SignatureError, match=f"{reason} .*serial {signer.certificate.serial_number:x}"):
            unseal(seal(dossier(1), signer), load_trust_store(keys))


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sandbox TSA in its own process: it gives signatures a time no signer can pick."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIENTHONG_HOME", str(tmp_path_factory.mktemp("tsa-home")))
        mp.delenv("LIENTHONG_STATE_DB", raising=False)
        with services.Sandbox(Settings.from_env(), {"tsa": 0}).start() as running:
            mp.setenv(f"AIRFLOW_CONN_{connection.TSA.upper()}", json.dumps(running.tsa_connection()))
            yield ca_file()


def test_rotation_overlap_then_old_signatures_hold_at_their_stamped_time(keys: Path, tsa: Path) -> None:
    old = new_signer(keys, valid_from=NOW - dt.timedelta(days=700), valid_for=dt.timedelta(days=730))
    new = new_signer(keys)  # rotated in while the old certificate has 30 days left
    by_old, by_new = seal(dossier(1), old), seal(dossier(2), new)
    signed_at = verify(stamp(by_old["ChuKySo"].encode()), by_old["ChuKySo"].encode(), tsa)
    trust = load_trust_store(keys)

    # Overlap: both verify today.
    assert unseal(by_old, trust)[1] == old.certificate and unseal(by_new, trust)[1] == new.certificate

    # Later, once the old certificate has expired: judged at verification time it fails, by name...
    later = old.certificate.not_valid_after_utc + dt.timedelta(days=1)
    with pytest.raises(SignatureError, match=f"certificate expired .*serial {old.certificate.serial_number:x}"):
        unseal(by_old, trust, at=later)
    assert unseal(by_new, trust, at=later)[1] == new.certificate
    # ...judged at its stamped signing time it holds; a signature stamped after expiry never does.
    assert unseal(by_old, trust, at=signed_at)[1] == old.certificate
    with pytest.raises(SignatureError, match="certificate expired"):
        unseal(by_old, trust, at=old.certificate.not_valid_after_utc + dt.timedelta(seconds=1))

    # Retiring the old key as superseded keeps what it signed before, refuses what comes after.
    retired = signed_at + dt.timedelta(minutes=1)
    revoke(keys, old.certificate.serial_number, x509.ReasonFlags.superseded, at=retired)
    trust = load_trust_store(keys)
    assert unseal(by_old, trust, at=signed_at)[1] == old.certificate
    with pytest.raises(SignatureError, match="revoked .*superseded"):
        unseal(by_old, trust, at=retired + dt.timedelta(seconds=1))
    # A compromised key voids even what it signed before: whoever stole it can claim any time.
    revoke(keys, old.certificate.serial_number, x509.ReasonFlags.key_compromise, at=retired)
    with pytest.raises(SignatureError, match="revoked .*keyCompromise"):
        unseal(by_old, load_trust_store(keys), at=signed_at)
    assert unseal(by_new, load_trust_store(keys))[1] == new.certificate


def test_an_intermediate_is_checked_against_its_own_issuers_crl(keys: Path) -> None:
    ca = KeyPaths.in_dir(keys)
    root_key = serialization.load_pem_private_key(ca.ca_key.read_bytes(), password=None)
    root = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = issue_certificate(x509.Name.from_rfc4514_string("CN=intermediate,O=lienthong sandbox,C=VN"),
                            mid_key.public_key(), root_key, root, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    signer = Signer(leaf_key, [issue_certificate(SUBJECT, leaf_key.public_key(), mid_key, mid), mid])
    record = seal(dossier(1), signer)
    assert unseal(record, load_trust_store(keys))[1] == signer.certificate
    revoke(keys, mid.serial_number, x509.ReasonFlags.ca_compromise)
    with pytest.raises(SignatureError, match=f"revoked .*intermediate.*serial {mid.serial_number:x}"):
        unseal(record, load_trust_store(keys))
