"""A signing key in a real PKCS#11 token (SoftHSM2): made there, certified, signing, never leaving."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, ObjectClass

from lienthong.signing.hsm import KeyNotExportable, TokenKey, TokenKeyRef, enrol, open_session
from lienthong.signing.keys import agency_subject, load_signer, load_trust_store, signing_connection
from lienthong.signing.records import seal, unseal

SOFTHSM = next((p for p in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
                if Path(p).exists()), None)
pytestmark = pytest.mark.skipif(SOFTHSM is None or shutil.which("softhsm2-util") is None,
                                reason="SoftHSM2 is not installed: run scripts/setup-system.sh")
PIN = "4826-1937"
RECORD = {"MaHoSo": "000.00.12.H12-261125-0001", "TrangThaiHoSo": 2, "ChuHoSo": "Nguyễn Văn A"}


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenKeyRef]:
    """A fresh SoftHSM2 token in a tmp dir, with a key enrolled at the sandbox CA, offered as the
    Airflow connection of the key name ``agency-hsm``."""
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    ref = TokenKeyRef(SOFTHSM, "lienthong-test", "agency-2026", PIN)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", ref.token_label,
                        "--so-pin", "0000-9999", "--pin", PIN], check=True, capture_output=True)
        mp.setenv(f"AIRFLOW_CONN_{signing_connection('agency-hsm').upper()}", json.dumps({
            "conn_type": "pkcs11", "password": PIN,
            "extra": {"module": SOFTHSM, "token_label": ref.token_label, "key_label": ref.key_label}}))
        yield ref


@pytest.fixture(scope="module")
def enrolled(token: TokenKeyRef, keys: Path) -> TokenKeyRef:
    enrol(keys, token, agency_subject("000.00.12.H12", "Sở Tư pháp (HSM)"))
    return token


def test_a_wrong_pin_is_refused_and_not_echoed(token: TokenKeyRef) -> None:
    """First in the file: PKCS#11 logs a process in once, and later sessions are already in."""
    wrong = TokenKeyRef(token.module, token.token_label, token.key_label, "0000-0000")
    with pytest.raises(pkcs11.exceptions.PinIncorrect) as caught:
        open_session(wrong)
    assert "0000-0000" not in str(caught.value)


def test_token_key_signs_records_the_existing_verifier_accepts(enrolled: TokenKeyRef, keys: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    signer = load_signer(keys, "agency-hsm")
    assert isinstance(signer._key, TokenKey)  # chosen by the connection, not a file
    sealed = [seal({**RECORD, "TrangThaiHoSo": status}, signer) for status in (2, 4, 9)]
    trust = load_trust_store(keys)
    for record in sealed:
        payload, cert = unseal(record, trust)
        assert payload["MaHoSo"] == RECORD["MaHoSo"] and cert == signer.certificate
    assert "Sở Tư pháp (HSM)" in signer.certificate.subject.rfc4514_string()
    tampered = {**sealed[0], "TrangThaiHoSo": 10}
    with pytest.raises(Exception, match="bad signature"):
        unseal(tampered, trust)
    assert PIN not in caplog.text and PIN not in repr(enrolled)


def test_the_private_key_cannot_leave_the_token(enrolled: TokenKeyRef, keys: Path) -> None:
    signer = load_signer(keys, "agency-hsm")
    with pytest.raises(KeyNotExportable):
        signer._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    with open_session(enrolled, rw=True) as session:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC,
                                  label=enrolled.key_label)
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
        assert private[Attribute.NEVER_EXTRACTABLE] and private[Attribute.LOCAL]  # made in the token
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private[Attribute.VALUE]
        wrapper = session.generate_key(KeyType.AES, 256, template={Attribute.WRAP: True})
        with pytest.raises(pkcs11.exceptions.KeyUnextractable):
            wrapper.wrap_key(private)
        with pytest.raises(pkcs11.exceptions.PKCS11Error):  # a sensitive key cannot be made readable again
            private[Attribute.SENSITIVE] = False
            private[Attribute.VALUE]


def test_enrolling_twice_under_one_label_is_refused(enrolled: TokenKeyRef, keys: Path) -> None:
    with pytest.raises(ValueError, match="already holds"):
        enrol(keys, enrolled, agency_subject("000.00.12.H12", "Sở Tư pháp (HSM)"))
