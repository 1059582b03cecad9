"""The auditor's bundle of one run: what ``sh verify.sh`` needs, and nothing of lienthong.

The manifest is written as the exact bytes that were signed, and each record as the exact leaf
bytes that were hashed (wrapped with its index and proof), so that openssl alone can recompute
what the platform signed; the bundle holds hashes, dossier codes and reasons, no personal data
(reasons are masked before they are ever hashed, in the ledger).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lienthong.audit import manifest, timestamp
from lienthong.audit.ledger import Ledger
from lienthong.signing.canonical import canonical_json

TEMPLATES = Path(__file__).resolve().parent / "bundle"


def write_bundle(ledger: Ledger, run_id: str, out_dir: Path, *, keys_dir: Path | None = None,
                 tsa_ca: Path | None = None) -> Path:
    from lienthong.settings import settings
    from lienthong.signing.keys import KeyPaths

    m = ledger.manifest(run_id)
    if m is None:
        raise ValueError(f"run {run_id} is not sealed: nothing to export")
    if Path(run_id).name != run_id:
        raise ValueError(f"run id {run_id!r} is not a plain name")
    doc = manifest.decode(m["manifest"])
    bundle = Path(out_dir) / run_id
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "manifest.json").write_bytes(m["manifest"].encode("utf-8"))
    (bundle / "manifest.p7s").write_bytes(bytes(m["signature"] or b""))
    tsr = bundle / "manifest.tsr"
    tsr.unlink(missing_ok=True)
    if m["timestamp"]:
        tsr.write_bytes(bytes(m["timestamp"]))
    shutil.copyfile(KeyPaths.in_dir(keys_dir or settings().keys_dir).ca_cert, bundle / "ca.pem")
    tsa = tsa_ca or timestamp.ca_file()
    if tsa.exists():  # else verify.sh names the missing file
        shutil.copyfile(tsa, bundle / "tsa-ca.pem")
    # Streamed a chunk at a time: a million records with their proofs would take gigabytes at once.
    with (bundle / "records.jsonl").open("wb") as out:
        for row in ledger.each_outcome(run_id, in_leaf_order=True):
            out.write(canonical_json({"leaf": manifest.leaf_data(row), "leaf_index": row["leaf_index"],
                                      "proof": row["proof"] or []}) + b"\n")
    (bundle / "README.md").write_text((TEMPLATES / "README.md").read_text(encoding="utf-8").format(
        run_id=run_id, route=doc["route"], settled_at=doc["settled_at"], seq=doc["seq"],
        tree_size=doc["tree"]["size"], prev_manifest_hash=doc["prev_manifest_hash"] or "none (first run)",
    ), encoding="utf-8")
    script = bundle / "verify.sh"
    shutil.copyfile(TEMPLATES / "verify.sh", script)
    script.chmod(0o755)
    return bundle
