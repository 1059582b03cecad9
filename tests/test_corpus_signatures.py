"""Forged, tampered, untrusted, weakly signed and replayed records (tests/corpus/signatures.yaml),
pushed to the real portal sandbox next to good ones: each refused (or, replayed, acknowledged as a
duplicate and stored once) with its reason, while the good records of the same batch are stored."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hmac
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lienthong.connectors.rest import PortalSink
from lienthong.sandbox.http import ServerThread
from lienthong.sandbox.portal import create_app, sandbox_stats
from lienthong.signing.jws import Signer, thumbprint
from lienthong.signing.keys import KeyPaths, agency_subject, init_keys, issue_certificate, load_signer
from lienthong.signing.records import PROOF, SIGNATURE, VERSION, seal, seal_batch, version_of
from lienthong.signing.trust import TrustStore
from tests.corpus import load, params
from tests.sealing import ALONE, head_of_one, sealed_as_given
from tests.test_portal_rest import PASSWORD, USERNAME, dossier

CORPUS = load("signatures")
Record = dict[str, Any]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def der(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


@dataclass
class Keys:
    """What a forger may hold: our public certificates, its own keys and CAs, keys our CA issued
    with weak parameters, and (for one case) the CA key itself."""

    agency: Signer
    platform: Signer
    stranger: Signer
    stranger_ca: x509.Certificate
    pairs: dict[str, tuple[Any, list[x509.Certificate]]]


def build_keys(keys_dir: Path, scratch: Path) -> Keys:
    paths = KeyPaths.in_dir(keys_dir)
    ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    agency, platform = load_signer(keys_dir), load_signer(keys_dir, "platform")
    init_keys(scratch / "stranger")
    stranger = load_signer(scratch / "stranger")
    stranger_ca = x509.load_pem_x509_certificate(KeyPaths.in_dir(scratch / "stranger").ca_cert.read_bytes())
    subject = agency_subject("000.00.01.H12", "Forger")

    def issued(key: Any, by: Any = ca_key, issuer: x509.Certificate | None = ca_cert, **kw: Any) -> x509.Certificate:
        return issue_certificate(subject, key.public_key(), by, issuer, **kw)

    weak = {name: key for name, key in (("rsa1024", rsa.generate_private_key(65537, 1024)),
                                        ("rsa2048", rsa.generate_private_key(65537, 2048)),
                                        ("secp256k1", ec.generate_private_key(ec.SECP256K1())))}
    pairs: dict[str, tuple[Any, list[x509.Certificate]]] = {name: (key, [issued(key)]) for name, key in weak.items()}
    own = ec.generate_private_key(ec.SECP256R1())
    pairs["self_signed"] = (own, [issued(own, own, None)])
    impostor_key = ec.generate_private_key(ec.SECP256R1())  # a CA of its own, named like ours
    impostor = issue_certificate(ca_cert.subject, impostor_key.public_key(), impostor_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    pairs["impostor"] = (leaf_key, [issued(leaf_key, impostor_key, impostor), impostor])
    grandchild = ec.generate_private_key(ec.SECP256R1())
    pairs["grandchild"] = (grandchild, [issued(grandchild, agency._key, agency.certificate), agency.certificate])
    pairs["ca"] = (ca_key, [ca_cert])
    bare = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    no_usage = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
                .public_key(bare.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                .sign(ca_key, hashes.SHA256()))
    pairs["no_usage"] = (bare, [no_usage])
    pairs["agency"] = (agency._key, agency.chain)
    pairs["platform"] = (platform._key, platform.chain)
    pairs["stranger"] = (stranger._key, stranger.chain)
    pairs["stranger_with_root"] = (stranger._key, [*stranger.chain, stranger_ca])
    pairs["stranger_then_agency"] = (stranger._key, [*stranger.chain, agency.certificate])
    return Keys(agency, platform, stranger, stranger_ca, pairs)


def handmade(keys: Keys, payload: Record, key: str, chain: str, alg: Any = "ES256", x5t: str | None = None,
             extra: dict[str, Any] | None = None, repeat_chain: int | None = None, **_: Any) -> Record:
    """A record sealed by hand, alone in its batch, with whatever header, key and chain a forger
    chooses."""
    versioned = {**payload, VERSION: version_of(payload)}
    certs = keys.pairs[chain][1] if chain in keys.pairs else []
    header: dict[str, Any] = {"alg": alg}
    if chain == "garbage":
        header["x5c"] = ["bm90LWEtY2VydGlmaWNhdGU="]
    elif certs:
        header["x5c"] = [der(c) for c in certs] * (repeat_chain or 1)
        header["x5t#S256"] = thumbprint(keys.pairs[x5t][1][0] if x5t else certs[0])
    header |= extra or {}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(head_of_one(versioned))}".encode()
    certificate = keys.agency.certificate
    if key == "none":
        signature = b""
    elif key == "hmac_certificate":
        signature = hmac.new(certificate.public_bytes(serialization.Encoding.DER), signing_input, "sha256").digest()
    elif key == "hmac_public_pem":
        pem = certificate.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        signature = hmac.new(pem, signing_input, "sha512").digest()
    else:
        algorithm = jwt.algorithms.get_default_algorithms()[alg]
        signature = algorithm.sign(signing_input, keys.pairs[key][0])
    head = signing_input.split(b".")[0].decode()
    return {**versioned, PROOF: ALONE, SIGNATURE: f"{head}..{b64(signature)}"}


def forge(keys: Keys, case: dict[str, Any], n: int) -> tuple[list[list[Record]], list[Record]]:
    """(batches pushed first, the tail of the batch under test); its last record is the case."""
    args = case.get("args") or {}
    payload = dossier(n)
    sealed = seal(payload, keys.agency)
    sig = sealed[SIGNATURE]
    batch = seal_batch([dossier(n + 1), payload, dossier(n + 2)], keys.agency)  # payload's leaf is 1 of 3
    member = batch[1]
    recipes: dict[str, Callable[[], Any]] = {
        "tamper": lambda: {**sealed, args["field"]: args["value"]},
        "nfd": lambda: {**sealed, args["field"]: unicodedata.normalize("NFD", sealed[args["field"]])},
        "tamper_document": lambda: _with_document_hash(sealed, args["value"]),
        "borrowed_signature": lambda: {**sealed, SIGNATURE: seal(dossier(n + 1), keys.agency)[SIGNATURE]},
        "flip_signature_bit": lambda: {**sealed, SIGNATURE: _flip(sig)},
        "truncate_signature": lambda: {**sealed, SIGNATURE: sig[:-10]},
        "zero_signature": lambda: {**sealed, SIGNATURE: sig.split("..")[0] + ".." + "A" * len(sig.split("..")[1])},
        "borrowed_header": lambda: {**sealed, SIGNATURE: seal(payload, keys.platform)[SIGNATURE].split("..")[0]
                                    + ".." + sig.split("..")[1]},
        "attached": lambda: {**sealed, SIGNATURE: sig.replace(
            "..", f".{b64(head_of_one({**payload, VERSION: sealed[VERSION]}))}.")},
        "set_signature": lambda: {**sealed, SIGNATURE: args["value"]},
        "drop_signature": lambda: _unsigned(sealed),
        "raw_header": lambda: {**sealed, SIGNATURE: f"{args['header']}..{sig.split('..')[1]}"},
        "pad_header": lambda: {**sealed,
                               SIGNATURE: sig.replace("..", "=" * (-len(sig.split("..")[0]) % 4 or 4) + "..")},
        "handmade": lambda: handmade(keys, payload, **args),
        "stranger": lambda: seal(payload, keys.stranger),
        "wrong_version": lambda: sealed_as_given({**payload, VERSION: "2" * 64}, keys.agency),
        "tamper_in_batch": lambda: {**member, args["field"]: args["value"]},
        "set_proof": lambda: {**member, PROOF: {**member[PROOF], args["field"]: args["value"]}},
        "flip_path_hash": lambda: {**member, PROOF: {**member[PROOF], "path": [_flip_hex(member[PROOF]["path"][0]),
                                                                               *member[PROOF]["path"][1:]]}},
        "proof_of_another_member": lambda: {**member, PROOF: batch[2][PROOF]},
        "signature_of_another_batch": lambda: {**member, SIGNATURE: seal_batch([dossier(n + 3), dossier(n + 4)],
                                                                                keys.agency)[1][SIGNATURE]},
        "drop_proof": lambda: {k: v for k, v in member.items() if k != PROOF},
    }
    if case["forge"] in recipes:
        return [], [recipes[case["forge"]]()]
    newer = seal(dossier(n, TrangThaiHoSo=9, NgayKetThucXuLy="20250104160000"), keys.agency)
    replays: dict[str, tuple[list[list[Record]], list[Record]]] = {
        "replay": ([[sealed]], [sealed]),
        "replay_resigned": ([[sealed]], [seal(payload, keys.agency)]),
        "replay_in_batch": ([], [sealed, sealed]),
        "replay_old_version": ([[sealed], [newer]], [sealed]),
        "replay_tampered": ([[sealed]], [{**sealed, "TrangThaiHoSo": 10}]),
    }
    return replays[case["forge"]]


def _unsigned(record: Record) -> Record:
    return {k: v for k, v in record.items() if k != SIGNATURE}


def _flip(signature: str) -> str:
    head, tail = signature.split("..")
    middle = len(tail) // 2
    return f"{head}..{tail[:middle]}{'B' if tail[middle] == 'A' else 'A'}{tail[middle + 1:]}"


def _flip_hex(digest: str) -> str:
    return ("1" if digest[0] == "0" else "0") + digest[1:]


def _with_document_hash(sealed: Record, value: str) -> Record:
    record = copy.deepcopy(sealed)
    record["TaiLieuNop"][0]["MaHashTep"] = value
    return record


@pytest.fixture(scope="module")
def forger(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return build_keys(keys, tmp_path_factory.mktemp("forger"))


@pytest.fixture(scope="module")
def portal(trust: TrustStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(create_app(tmp_path_factory.mktemp("portal") / "portal.db", trust,
                                 {USERNAME: PASSWORD})) as server:
        yield server


def stored(sink: PortalSink, code: str) -> int:
    [found] = sink.lookup([code])
    return int(found.get("versions", 0))


@pytest.mark.parametrize("case", params(CORPUS))
def test_a_bad_signature_is_refused_and_a_replay_stored_once(portal: ServerThread, forger: Keys,
                                                             case: dict[str, Any]) -> None:
    n = 1000 + 10 * CORPUS["cases"].index(case)
    earlier, tail = forge(forger, case, n)
    good = seal(dossier(n + 5), forger.agency)
    with PortalSink(portal.url, USERNAME, PASSWORD) as sink:
        for batch in earlier:
            assert all(ack.acknowledged for ack in sink.push(batch))
        acks = sink.push([good, *tail])
        ack = acks[-1]
        assert (acks[0].error_code, acks[0].status) == (0, "stored")  # the good record of the batch
        assert (ack.error_code, ack.status) == (case["code"], case["status"]), ack
        assert ack.MaHoSo == tail[-1].get("MaHoSo")  # the answer names the record
        assert re.search(case["error"], ack.message), ack.message
        assert stored(sink, tail[-1]["MaHoSo"]) == case.get("stored", 0)


def test_one_batch_of_every_forgery_stores_exactly_its_good_records(trust: TrustStore, forger: Keys,
                                                                    tmp_path: Path) -> None:
    forged = [forge(forger, case, 5000 + 10 * i)[1][-1] for i, case in enumerate(CORPUS["cases"])
              if not case["forge"].startswith("replay")]
    good = [seal(dossier(9000 + i), forger.agency) for i in range(5)]
    batch = [*good[:2], *forged[: len(forged) // 2], good[2], *forged[len(forged) // 2:], *good[3:]]
    with ServerThread(create_app(tmp_path / "portal.db", trust, {USERNAME: PASSWORD})) as server, \
            PortalSink(server.url, USERNAME, PASSWORD) as sink:
        acks = sink.push(batch)
        again = sink.push(batch)  # the whole batch replayed: the good ones are duplicates now
        stats = sandbox_stats(server.url)
    codes = {record["MaHoSo"]: ack.status for record, ack in zip(batch, acks) if isinstance(record, dict)}
    assert [codes[g["MaHoSo"]] for g in good] == ["stored"] * 5
    assert [a.status for a, r in zip(again, batch) if r in good] == ["duplicate"] * 5
    assert sum(not a.acknowledged for a in acks) == len(forged)
    assert (stats["dossiers"], stats["versions"], stats["rejected"]) == (5, 5, 2 * len(forged))
