"""The export bundle verifies with sh and openssl alone, and stops verifying once tampered."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from lienthong.audit import ledger as ledger_module
from lienthong.audit import report
from lienthong.audit.ledger import ACKNOWLEDGED, Ledger
from lienthong.signing.canonical import canonical_json
from tests.audit_runs import outcome, running_tsa, settle, short_lived_platform_seal, three_runs, wait_until

CLEAN_PATH = "/usr/bin:/bin"


def verify_sh(bundle: Path, path: str = CLEAN_PATH) -> subprocess.CompletedProcess[str]:
    """As an auditor runs it: no project, no venv, a bare PATH, from another directory."""
    return subprocess.run(["sh", str(bundle / "verify.sh")], capture_output=True, text=True, env={"PATH": path},
                          cwd="/", timeout=120, check=False)


@pytest.fixture
def bundle(state_db_url: str, keys: Path, tmp_path: Path) -> Path:
    ledger = three_runs(state_db_url, keys)
    return report.export(ledger, "run-1", tmp_path / "out", keys_dir=keys)


def test_the_bundle_holds_the_signed_bytes_and_every_record(bundle: Path, state_db_url: str) -> None:
    ledger = Ledger(state_db_url)
    assert (bundle / "manifest.json").read_text() == ledger.manifest("run-1")["manifest"]
    lines = (bundle / "records.jsonl").read_bytes().splitlines()
    assert len(lines) == 5
    first = json.loads(lines[0])
    assert canonical_json(first) == lines[0] and first["leaf_index"] == 0 and first["leaf"]["record_key"] == "H40-0"
    assert "001090012345" not in (bundle / "records.jsonl").read_text()
    readme = (bundle / "README.md").read_text()
    assert "openssl cms -verify -binary -inform DER -in manifest.p7s -content manifest.json" in readme
    assert "run-1" in readme


def test_verify_sh_checks_signature_and_merkle_root(bundle: Path) -> None:
    done = verify_sh(bundle)
    assert "ok: signature by subject=C = VN, O = lienthong sandbox, CN = lienthong platform (run ledger)" in done.stdout
    assert "ok: Merkle root" in done.stdout and "over 5 records" in done.stdout, done.stdout + done.stderr


# Debian's awk is mawk unless gawk is installed; verify.sh writes hashes' bytes with awk's printf.
AWKS = [name for name in ("mawk", "gawk") if Path("/usr/bin", name).exists()]


@pytest.mark.parametrize("awk", AWKS)
def test_verify_sh_recomputes_the_root_of_every_shape_of_tree(state_db_url: str, keys: Path, tmp_path: Path,
                                                              awk: str) -> None:
    """RFC 6962 splits a tree at the largest power of two below its size, so sizes around powers
    of two (a lone node carried up one level or several) are where a bottom-up recomputation
    can go wrong; 0 is the run with nothing new. 2,001 leaves fill verify.sh's batches of 1,000
    files twice and leave one over; their 1,000 parent pairs fill one exactly, a node left over."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "awk").symlink_to(Path("/usr/bin", awk))
    ledger = Ledger(state_db_url)
    for size in (0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 2001):
        settle(ledger, f"run-{size}", keys, [outcome(f"H40-{i}", ACKNOWLEDGED) for i in range(size)])
        bundle = report.export(ledger, f"run-{size}", tmp_path / "out", keys_dir=keys)
        done = verify_sh(bundle, f"{tools}:{CLEAN_PATH}")
        root = ledger.manifest(f"run-{size}")["merkle_root"]
        assert f"ok: Merkle root {root} over {size} records" in done.stdout, (size, done.stdout + done.stderr)


def test_verify_sh_fails_for_a_changed_record(bundle: Path) -> None:
    records = bundle / "records.jsonl"
    records.write_bytes(records.read_bytes().replace(b'"outcome":"quarantined"', b'"outcome":"acknowledged"', 1))
    done = verify_sh(bundle)
    assert done.returncode == 1 and "FAIL: Merkle root" in done.stdout and "NOT VERIFIED" in done.stdout


def test_verify_sh_fails_for_a_removed_record(bundle: Path) -> None:
    records = bundle / "records.jsonl"
    lines = records.read_bytes().splitlines(keepends=True)
    records.write_bytes(b"".join(lines[:2] + lines[3:]))
    done = verify_sh(bundle)
    assert done.returncode == 1 and "records.jsonl line 3 is leaf 3, expected leaf 2" in done.stdout


def test_verify_sh_names_a_missing_records_file_once(bundle: Path) -> None:
    (bundle / "records.jsonl").unlink()
    done = verify_sh(bundle)
    assert done.returncode == 1 and "records.jsonl" in done.stderr, done.stdout + done.stderr
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert failures[1:] == [  # after the time stamp's: this bundle was sealed without a TSA
        "FAIL: Merkle root: the leaves could not be hashed (awk's or openssl's message above)"], failures


def test_verify_sh_names_openssl_failing_above_the_leaves(bundle: Path, tmp_path: Path) -> None:
    """An openssl that dies while hashing a level of the tree (memory, a full /dev/shm) must be
    named as such, not read as records that give another root."""
    tools, calls = tmp_path / "bin", tmp_path / "calls"
    tools.mkdir()
    (tools / "openssl").write_text(f"""#!/bin/sh
case " $* " in *" -r 0 "*)  # hashing verify.sh's numbered files: the leaves first, then each level
    echo x >>"{calls}"
    if [ "$(wc -l <"{calls}")" -ge 2 ]; then echo "openssl: cannot allocate memory" >&2; exit 1; fi;;
esac
exec /usr/bin/openssl "$@"
""")
    (tools / "openssl").chmod(0o755)
    done = verify_sh(bundle, f"{tools}:{CLEAN_PATH}")
    assert done.returncode == 1 and "openssl: cannot allocate memory" in done.stderr, done.stdout + done.stderr
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert failures[1:] == [  # after the time stamp's: this bundle was sealed without a TSA
        "FAIL: Merkle root: a level of the tree could not be hashed (awk's or openssl's message above)"], failures


def test_verify_sh_fails_for_a_changed_manifest(bundle: Path) -> None:
    manifest = bundle / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"pulled":5', b'"pulled":4'))
    done = verify_sh(bundle)
    assert done.returncode == 1 and "FAIL: signature" in done.stdout


def test_a_stamped_bundle_verifies_after_the_platform_certificate_expired(state_db_url: str, keys: Path,
                                                                          tmp_path: Path) -> None:
    """An audit comes years later: verify.sh judges the signer's certificate at the stamped time."""
    with running_tsa(tmp_path / "tsa"):
        seal, expires = short_lived_platform_seal(keys)
        ledger = Ledger(state_db_url)
        settle(ledger, "run-1", keys, [outcome("H40-1", ACKNOWLEDGED)], seal=seal)
        bundle = report.export(ledger, "run-1", tmp_path / "out", keys_dir=keys)  # with this TSA's CA
    wait_until(expires)

    done = verify_sh(bundle)
    assert done.returncode == 0 and "ok: signature by" in done.stdout, done.stdout + done.stderr
    (bundle / "manifest.tsr").unlink()
    done = verify_sh(bundle)
    assert "FAIL: signature: " in done.stdout and "certificate has expired" in done.stdout, done.stdout


@pytest.mark.parametrize("chunk", [2, 3])  # a tie at a leaf within a page, and across two
def test_a_bundle_written_a_chunk_at_a_time_is_the_run_in_leaf_order(state_db_url: str, keys: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     chunk: int) -> None:
    ledger = three_runs(state_db_url, keys)
    whole = report.export(ledger, "run-1", tmp_path / "whole", keys_dir=keys)
    monkeypatch.setattr(ledger_module, "INSERT_CHUNK", chunk)
    paged = report.export(ledger, "run-1", tmp_path / "paged", keys_dir=keys)
    assert (paged / "records.jsonl").read_bytes() == (whole / "records.jsonl").read_bytes()
    done = verify_sh(paged)  # unstamped (no TSA here), so the signature and the tree are what hold
    assert "ok: signature by" in done.stdout and "ok: Merkle root" in done.stdout, done.stdout + done.stderr
    assert "over 5 records" in done.stdout

    # Rows only tampering leaves: one without a leaf, stored first; a second one at leaf 2.
    with ledger.engine.begin() as conn:
        for key, leaf in (("H40-X1", None), ("H40-X2", 2)):
            conn.execute(text("INSERT INTO record_outcomes (run_id, route, record_key, source_id, source_hash, "
                              "outcome, leaf_index) VALUES ('run-1', 'huyen__dossiers', :key, 'x', :h, "
                              "'acknowledged', :leaf)"), {"key": key, "h": "0" * 64, "leaf": leaf})
    tampered = report.export(ledger, "run-1", tmp_path / "tampered", keys_dir=keys)
    listed = [json.loads(line) for line in (tampered / "records.jsonl").read_bytes().splitlines()]
    sorted_whole = sorted(ledger.outcomes("run-1"), key=lambda r: (r["leaf_index"] is None, r["leaf_index"]))
    assert [r["leaf"]["record_key"] for r in listed] == [r["record_key"] for r in sorted_whole]
    assert [r["leaf_index"] for r in listed] == [0, 1, 2, 2, 3, 4, None]
