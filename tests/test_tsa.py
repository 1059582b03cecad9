"""The sandbox TSA as a real process over HTTP, our client's checks, and openssl's verdict on the same tokens."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import requests
from asn1crypto import tsp
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from lienthong.audit.timestamp import TimestampError, TsaUnavailable, ca_file, stamp, verify
from lienthong.connectors import connection
from lienthong.sandbox import services
from lienthong.sandbox.tsa import init_tsa
from lienthong.settings import Settings
from lienthong.signing.rfc3161 import TimeStampResp

MANIFEST = json.dumps({"run_id": "manual__2026-11-25", "records": 1200, "merkle_root": "ab" * 32}).encode()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Sandbox]:
    """The TSA alone, in its own process, with its connection offered as Airflow's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIENTHONG_HOME", str(tmp_path_factory.mktemp("home")))
        mp.delenv("LIENTHONG_STATE_DB", raising=False)
        with services.Sandbox(Settings.from_env(), {"tsa": 0}).start() as running:
            mp.setenv(f"AIRFLOW_CONN_{connection.TSA.upper()}", json.dumps(running.tsa_connection()))
            yield running


@pytest.fixture(scope="module")
def token(sandbox: services.Sandbox) -> bytes:
    return stamp(MANIFEST)


def openssl_verify(tsr: bytes, data: bytes, ca: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "run.tsr").write_bytes(tsr)
    (tmp_path / "manifest.json").write_bytes(data)
    return subprocess.run(["openssl", "ts", "-verify", "-in", str(tmp_path / "run.tsr"),
                           "-data", str(tmp_path / "manifest.json"), "-CAfile", str(ca)],
                          capture_output=True, text=True, check=False)


def test_token_verifies_and_dates_the_manifest(sandbox: services.Sandbox, token: bytes) -> None:
    assert ca_file() == sandbox.settings.sandbox_dir / "tsa" / "tsa-ca.pem"
    gen_time = verify(token, MANIFEST, ca_file())
    assert abs(dt.datetime.now(dt.timezone.utc) - gen_time) < dt.timedelta(minutes=1)


def test_openssl_accepts_the_tsr_and_rejects_other_data(token: bytes, tmp_path: Path) -> None:
    good = openssl_verify(token, MANIFEST, ca_file(), tmp_path)
    assert good.returncode == 0, good.stderr
    assert "Verification: OK" in good.stdout
    bad = openssl_verify(token, MANIFEST + b" ", ca_file(), tmp_path)
    assert bad.returncode != 0
    assert "message imprint mismatch" in bad.stdout + bad.stderr


def test_tsa_keys_are_its_own_pki(sandbox: services.Sandbox) -> None:
    tsa_dir = sandbox.settings.sandbox_dir / "tsa"
    assert {p.name: p.stat().st_mode & 0o777 for p in tsa_dir.glob("*.key.pem")} == {
        "tsa.key.pem": 0o600, "tsa-ca.key.pem": 0o600}
    eku = x509.load_pem_x509_certificate((tsa_dir / "tsa.pem").read_bytes()).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]


def test_tampered_data_names_the_imprint(token: bytes) -> None:
    with pytest.raises(TimestampError, match="message imprint .* does not match the data"):
        verify(token, MANIFEST.replace(b"1200", b"1201"), ca_file())


def test_token_from_another_tsa_is_refused(token: bytes, tmp_path: Path) -> None:
    other_ca = init_tsa(tmp_path / "other").ca_cert
    with pytest.raises(TimestampError, match="does not chain to"):
        verify(token, MANIFEST, other_ca)
    assert openssl_verify(token, MANIFEST, other_ca, tmp_path).returncode != 0


def test_tampered_signature_is_refused(token: bytes, tmp_path: Path) -> None:
    signature = TimeStampResp.load(token)["time_stamp_token"]["content"]["signer_infos"][0]["signature"].native
    assert token.count(signature) == 1
    forged = token.replace(signature, signature[:-1] + bytes([signature[-1] ^ 0x01]))
    with pytest.raises(TimestampError, match="signature over the signed attributes is invalid"):
        verify(forged, MANIFEST, ca_file())
    assert openssl_verify(forged, MANIFEST, ca_file(), tmp_path).returncode != 0


def test_each_stamp_is_a_fresh_token(token: bytes) -> None:
    again = stamp(MANIFEST)
    first, second = (TimeStampResp.load(t)["time_stamp_token"]["content"]["encap_content_info"]["content"].parsed
                     for t in (token, again))
    assert first["nonce"].native != second["nonce"].native
    assert first["serial_number"].native < second["serial_number"].native


def test_openssl_query_without_cert_req_gets_its_nonce_and_no_certificate(sandbox: services.Sandbox,
                                                                           tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(MANIFEST)
    subprocess.run(["openssl", "ts", "-query", "-data", str(tmp_path / "data"), "-sha256",
                    "-out", str(tmp_path / "q.tsq")], check=True, capture_output=True)
    query = (tmp_path / "q.tsq").read_bytes()
    answer = requests.post(f"{sandbox.url('tsa')}/tsa", data=query,
                           headers={"Content-Type": "application/timestamp-query"}, timeout=10)
    assert answer.headers["Content-Type"] == "application/timestamp-reply"
    signed_data = TimeStampResp.load(answer.content)["time_stamp_token"]["content"]
    info = signed_data["encap_content_info"]["content"].parsed
    assert info["nonce"].native == tsp.TimeStampReq.load(query)["nonce"].native
    assert not signed_data["certificates"]
    with pytest.raises(TimestampError, match="no certificate for its signer"):
        verify(answer.content, MANIFEST, ca_file())


def test_bad_requests_are_refused(sandbox: services.Sandbox) -> None:
    url = f"{sandbox.url('tsa')}/tsa"
    assert requests.get(url, timeout=10).status_code == 405
    assert requests.post(url, data=b"x", headers={"Content-Type": "application/json"}, timeout=10).status_code == 415
    garbage = requests.post(url, data=b"not DER", headers={"Content-Type": "application/timestamp-query"}, timeout=10)
    status = TimeStampResp.load(garbage.content)["status"]
    assert status["status"].native == "rejection"
    assert status["fail_info"].native == {"bad_data_format"}
    with pytest.raises(TimestampError, match="TSA refused: status rejection"):
        verify(garbage.content, MANIFEST, ca_file())


def test_stamp_gives_up_on_a_failing_tsa(sandbox: services.Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = f"{sandbox.url('tsa')}/_sandbox/faults"
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_TSA_FLAKY", json.dumps(
        {**sandbox.tsa_connection(), "extra": {**sandbox.tsa_connection()["extra"], "max_attempts": 2}}))
    requests.put(faults, json={"error_rate": 1.0}, timeout=10).raise_for_status()
    try:
        with pytest.raises(TsaUnavailable, match="503"):
            stamp(MANIFEST, "lienthong_tsa_flaky")
    finally:
        requests.put(faults, json={"error_rate": 0.0}, timeout=10).raise_for_status()
    assert verify(stamp(MANIFEST, "lienthong_tsa_flaky"), MANIFEST, ca_file()) is not None
