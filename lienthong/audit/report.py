"""What auditors ask of the ledger, in one place for the CLI and the auditor web page.

Every answer is plain data (dicts of str/int/bool/None, lists) so that the CLI can print it and
the web page can render it without knowing the tables. Reason messages pass through the
personal-data mask: the ledger stores hashes and dossier codes, but a message written by the
portal or by a gate could still quote a value.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from lienthong.signing import merkle
from lienthong.audit.manifest import leaf_bytes
from lienthong.audit.ledger import QUARANTINED, Ledger
from lienthong.audit.verify import Problem, VerifyReport, verify_runs
from lienthong.logs import mask_personal_ids

__all__ = ["Problem", "VerifyReport", "UnknownRun", "list_runs", "run_detail", "trace", "verify", "export"]


# Records a run's detail lists: a screenful to read, not the run (the export holds it all).
FIRST_RECORDS = 1000


class UnknownRun(LookupError):
    """The ledger has no run with this id."""


def list_runs(ledger: Ledger, route: str | None = None) -> list[dict[str, Any]]:
    """Runs, newest first: the run row, its counts and how it was sealed (no verification).

    Keys: run_id, route, status, started_at, finished_at (datetimes), counts (dict),
    quarantine_reasons (rule -> records), sealed (bool: a manifest exists), seq, tree_size,
    merkle_root, manifest_hash, stamped (bool: the manifest has a TSA time stamp).
    Verification is separate (:func:`verify`) because it costs a signature check per run.
    """
    manifests = {m["run_id"]: m for m in ledger.manifests(route)}
    rows = []
    for run in ledger.runs(route):
        m = manifests.get(run["run_id"])
        rows.append({**_run_fields(run), **_seal_fields(m)})
    return rows


def run_detail(ledger: Ledger, run_id: str, *, limit: int = FIRST_RECORDS) -> dict[str, Any]:
    """One run for an auditor: the run, its manifest as signed, and the first ``limit`` records.

    Keys: everything of :func:`list_runs`, plus ``cursor_before``, ``cursor_after``,
    ``manifest`` (the signed manifest as a dict, or None while the run is not sealed),
    ``outcomes``: the first ``limit`` records in leaf order, one dict each with record_key,
    source_id, source_hash, payload_hash, version, outcome, reasons (list of {field, rule,
    message}, masked), signer, ack_code, ack_status, acked_at, leaf_index, leaf_hash;
    ``quarantined``: the first ``limit`` quarantined ones, alike; and ``outcomes_total``,
    ``quarantined_total``: how many rows the run stores. Only what is shown is read: a run can
    hold a million records, and all of them (with proofs) would take gigabytes; the export
    holds every one. Raises :class:`UnknownRun`.
    """
    run = ledger.run(run_id)
    if run is None:
        raise UnknownRun(run_id)
    m = ledger.manifest(run_id)
    totals = ledger.outcome_totals(run_id)
    return {
        **_run_fields(run), **_seal_fields(m),
        "cursor_before": run["cursor_before"], "cursor_after": run["cursor_after"],
        "manifest": ledger.manifest_document(m) if m else None,
        "outcomes": _first_outcomes(ledger, run_id, limit), "outcomes_total": sum(totals.values()),
        "quarantined": _first_outcomes(ledger, run_id, limit, QUARANTINED),
        "quarantined_total": totals.get(QUARANTINED, 0),
    }


def trace(ledger: Ledger, code: str) -> list[dict[str, Any]]:
    """A dossier's journey across runs (oldest first), looked up by its code (the record key).

    One dict per run that met the dossier: run_id, route, run_status, started_at, and the
    outcome fields of :func:`run_detail` (source_hash, payload_hash, outcome, reasons, version,
    signer, ack_code, ack_status, acked_at, leaf_index, leaf_hash), plus ``proof`` (hex list),
    ``merkle_root`` and ``tree_size`` of that run's manifest and ``proof_ok``: whether the proof
    leads from the record's stored fields to the signed root (None while the run is unsealed).
    """
    steps = []
    for row in ledger.trace(code):
        m = ledger.manifest(row["run_id"])
        proof_ok = None
        if m is not None and row["leaf_index"] is not None:
            proof_ok = merkle.verify_inclusion(
                merkle.leaf_hash(leaf_bytes(row)), row["leaf_index"], m["tree_size"],
                [bytes.fromhex(p) for p in row["proof"] or []], bytes.fromhex(m["merkle_root"]))
        steps.append({
            "run_id": row["run_id"], "route": row["route"], "run_status": row["run_status"],
            "started_at": row["started_at"], **_outcome_fields(row), "proof": row["proof"],
            "merkle_root": m["merkle_root"] if m else None, "tree_size": m["tree_size"] if m else None,
            "proof_ok": proof_ok,
        })
    return steps


def verify(ledger: Ledger, run_id: str | None = None, *, every_record: bool = True,
           keys_dir: Path | None = None, tsa_ca: Path | None = None) -> VerifyReport:
    """Recompute one run (or every run and every route's chain when ``run_id`` is None).

    ``every_record=False`` counts each run's records against its signed tree instead of
    recomputing each one (:func:`lienthong.audit.verify.verify_runs` says what it still finds).
    ``keys_dir`` holds the CA that certifies the platform key (default: the settings' keys
    folder); ``tsa_ca`` the TSA's CA (default: the TSA connection's, else ``LIENTHONG_TSA_CA``). Each problem names the
    run and, where it is about one record, the record key. Raises :class:`UnknownRun`.
    """
    if run_id is not None and ledger.run(run_id) is None:
        raise UnknownRun(run_id)
    return verify_runs(ledger, run_id, every_record=every_record, keys_dir=keys_dir, tsa_ca=tsa_ca)


def export(ledger: Ledger, run_id: str, out_dir: Path, *, keys_dir: Path | None = None,
           tsa_ca: Path | None = None) -> Path:
    """Write the self-contained auditor bundle ``out_dir/<run_id>/`` and return its path.

    The bundle (manifest.json, manifest.p7s, manifest.tsr, ca.pem, tsa-ca.pem, records.jsonl,
    README.md, verify.sh) verifies with sh and openssl alone. Raises :class:`UnknownRun`, and
    ValueError for a run that is not sealed yet.
    """
    from lienthong.audit.export import write_bundle

    if ledger.run(run_id) is None:
        raise UnknownRun(run_id)
    return write_bundle(ledger, run_id, Path(out_dir), keys_dir=keys_dir, tsa_ca=tsa_ca)


def _first_outcomes(ledger: Ledger, run_id: str, limit: int, outcome: str | None = None) -> list[dict[str, Any]]:
    """One page of ``limit`` rows, one query: the pages after it are never asked for."""
    rows = ledger.each_outcome(run_id, chunk=limit, in_leaf_order=True, outcome=outcome)
    return [_outcome_fields(o) for o in itertools.islice(rows, limit)]


def _run_fields(run: dict[str, Any]) -> dict[str, Any]:
    return {k: run[k] for k in ("run_id", "route", "status", "started_at", "finished_at", "counts",
                                "quarantine_reasons")}


def _seal_fields(m: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "sealed": m is not None, "seq": m["seq"] if m else None,
        "tree_size": m["tree_size"] if m else None, "merkle_root": m["merkle_root"] if m else None,
        "manifest_hash": m["manifest_hash"] if m else None,
        "stamped": bool(m and m["timestamp"]),
    }


def _outcome_fields(o: dict[str, Any]) -> dict[str, Any]:
    return {
        "record_key": o["record_key"], "source_id": o["source_id"], "source_hash": o["source_hash"],
        "payload_hash": o["payload_hash"], "version": o["version"], "outcome": o["outcome"],
        "reasons": masked_reasons(o["reasons"]), "signer": o["signer"], "ack_code": o["ack_code"],
        "ack_status": o["ack_status"], "acked_at": o["acked_at"], "leaf_index": o["leaf_index"],
        "leaf_hash": o["leaf_hash"],
    }


def masked_reasons(reasons: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Reasons as shown to people: a personal ID quoted in a message is masked."""
    if reasons is None:
        return None
    return [{**r, "message": mask_personal_ids(str(r.get("message", "")))} for r in reasons]
