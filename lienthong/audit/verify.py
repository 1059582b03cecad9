"""``audit verify``: recompute every run's seal from what the state database holds.

Nothing stored is trusted on its own: each record's leaf is re-hashed from its fields and walked
up its audit path to the root in the signed manifest; the manifest's signature and time stamp
are checked against the CAs; the chain is walked per route. Each problem names the run and,
where it is about one record, the record's key, so that an auditor knows where to look.

What no check on the database alone can see: the newest runs of a route all removed at once
(the chain then just looks shorter). Exported bundles and the TSA's stamps are the outside
anchors for that.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lienthong.audit import manifest, timestamp
from lienthong.signing import merkle
from lienthong.audit.ledger import ACKNOWLEDGED, PENDING, QUARANTINED, Ledger

# What a problem is about; stable names, for tests and for the web page's badges.
UNSEALED, UNSIGNED, BAD_SIGNATURE, UNSTAMPED, BAD_TIMESTAMP = (
    "unsealed", "unsigned", "bad_signature", "unstamped", "bad_timestamp")
MANIFEST_MISMATCH, RUN_MISMATCH, COUNTS_MISMATCH, ROOT_MISMATCH = (
    "manifest_mismatch", "run_mismatch", "counts_mismatch", "root_mismatch")
RECORD_CHANGED, RECORD_REMOVED, RECORD_ADDED = "record_changed", "record_removed", "record_added"
RUN_REMOVED, RUN_REORDERED, CHAIN_BROKEN = "run_removed", "run_reordered", "chain_broken"


@dataclass(frozen=True)
class Problem:
    run_id: str | None
    record_key: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"run {self.run_id}" + (f", record {self.record_key}" if self.record_key else "")
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    runs_checked: int = 0
    records_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_runs(ledger: Ledger, run_id: str | None = None, *, every_record: bool = True,
                keys_dir: Path | None = None, tsa_ca: Path | None = None) -> VerifyReport:
    """One run (with its links in the chain) or, when ``run_id`` is None, every run and chain.

    ``every_record=False`` is the quick look a page opened many times a day can afford: seals,
    chains and run rows as in full, but each run's records only counted (one query for every
    run) against its signed tree, rather than each one hashed up to the root (seconds per
    100,000 records). A removed or added record row is still found; a changed one only by the
    full check, and ``records_checked`` stays 0 since no record was recomputed.
    """
    from lienthong.settings import settings
    from lienthong.signing.keys import KeyPaths

    seals = _SealChecker(KeyPaths.in_dir(keys_dir or settings().keys_dir).ca_cert, tsa_ca or timestamp.ca_file())
    report = VerifyReport()
    if run_id is None:
        runs, chain = ledger.runs(), ledger.manifests()
    else:
        run = ledger.run(run_id)
        runs, chain = ([run], ledger.manifests(run["route"])) if run else ([], [])
    known = {r["run_id"] for r in runs} if run_id is None else None
    report.problems += [p for p in _check_chains(chain, known) if run_id is None or p.run_id == run_id]
    by_run = {m["run_id"]: m for m in chain}
    stored = None if every_record else ledger.stored_records()
    for run in runs:
        report.runs_checked += 1
        report.records_checked += _check_run(ledger, run, by_run.get(run["run_id"]), seals, report.problems, stored)
    return report


def _check_chains(chain: list[dict[str, Any]], known_runs: set[str] | None) -> Iterable[Problem]:
    """Per route, in the stored seq order: 1, 2, 3 ... each pointing at the one before."""
    prev: dict[str, Any] | None = None
    for m in chain:
        if prev is not None and prev["route"] != m["route"]:
            prev = None
        run_id = m["run_id"]
        if known_runs is not None and run_id not in known_runs:
            yield Problem(run_id, None, RUN_REMOVED,
                          f"the run's manifest (seq {m['seq']}) is sealed but its run row is gone")
        expected = prev["seq"] + 1 if prev else 1
        if m["seq"] > expected:
            after = f"after run {prev['run_id']} (seq {prev['seq']})" if prev else "at the start of the chain"
            yield Problem(run_id, None, RUN_REMOVED,
                          f"seq {m['seq']} of route {m['route']}: {m['seq'] - expected} run(s) missing {after}")
        elif m["seq"] < expected:
            yield Problem(run_id, None, RUN_REORDERED, f"seq {m['seq']} repeats or goes back (expected {expected})")
        doc = _doc(m)
        claimed = doc.get("prev_manifest_hash") if doc is not None else m["prev_hash"]
        actual = _sha256(prev["manifest"]) if prev else None
        if claimed != actual:
            before = f"run {prev['run_id']}'s manifest hashes to {actual}" if prev else "no run precedes it"
            yield Problem(run_id, None, CHAIN_BROKEN,
                          f"the manifest names {claimed} as the previous manifest, but {before}")
        prev = m


def _check_run(ledger: Ledger, run: dict[str, Any], m: dict[str, Any] | None, seals: "_SealChecker",
               problems: list[Problem], stored: dict[str, int] | None) -> int:
    """Records recomputed; ``stored`` (rows per run) given, the records are counted instead."""
    run_id = run["run_id"]

    def problem(kind: str, message: str, record_key: str | None = None) -> None:
        problems.append(Problem(run_id, record_key, kind, message))

    if m is None:
        if run["finished_at"] is not None:
            problem(UNSEALED, "the run is settled but has no manifest")
        return 0
    doc = _doc(m)
    if doc is None:
        problem(MANIFEST_MISMATCH, "the stored manifest is not JSON")
        return 0
    if manifest.encode(doc)[0] != m["manifest"] or _sha256(m["manifest"]) != m["manifest_hash"]:
        problem(MANIFEST_MISMATCH, "the stored manifest's bytes or hash were changed")
    for column, key in (("run_id", "run_id"), ("route", "route"), ("seq", "seq"), ("prev_hash", "prev_manifest_hash")):
        if m[column] != doc.get(key):
            problem(MANIFEST_MISMATCH, f"{column} {m[column]!r} differs from the signed manifest's {doc.get(key)!r}")
    seals.check(m, problem)
    cursor = doc.get("cursor", {})
    for column, signed in (("status", doc.get("status")), ("cursor_before", cursor.get("before")),
                           ("cursor_after", cursor.get("after")), ("counts", doc.get("counts")),
                           ("quarantine_reasons", doc.get("quarantine_reasons"))):
        if run[column] != signed:
            problem(RUN_MISMATCH, f"the run's {column} differs from the signed manifest")
    if stored is not None:
        _check_record_count(stored.get(run_id, 0), doc["tree"]["size"], problem)
        return 0
    return _check_records(ledger.each_outcome(run_id), doc, problem)


def _check_record_count(stored: int, size: int, problem: Any) -> None:
    """The quick mode's look at the records, with the kinds the full check would name them by
    (which leaf is missing or doubled, it alone can say)."""
    if stored < size:
        problem(RECORD_REMOVED, f"{size - stored} of the signed tree's {size} records are not stored "
                                "(a full verification names which)")
    elif stored > size:
        problem(RECORD_ADDED, f"{stored - size} record(s) stored beyond the signed tree's {size} "
                              "(a full verification names which)")


def _check_records(rows: Iterable[dict[str, Any]], doc: dict[str, Any], problem: Any) -> int:
    """Each record walked to the signed root as it is read; then completeness, then the counts.

    What stays of a record once it is checked is its leaf hash and key, so a million-record run is
    verified in about a hundred megabytes, not the gigabytes its rows with proofs would take."""
    size, root = doc["tree"]["size"], bytes.fromhex(doc["tree"]["root"])
    keys: list[str | None] = [None] * size  # None: no record seen at that leaf (yet)
    leaves = bytearray(32 * size)
    tally = {"pulled": 0, ACKNOWLEDGED: 0, QUARANTINED: 0, PENDING: 0}
    for row in rows:
        tally["pulled"] += 1
        if row["outcome"] in tally:
            tally[row["outcome"]] += 1
        key, index = row["record_key"], row["leaf_index"]
        if index is None or not 0 <= index < size:
            problem(RECORD_ADDED, f"leaf index {index} is outside the signed tree of {size}", key)
            continue
        if keys[index] is not None:
            problem(RECORD_ADDED, f"a second record at leaf {index} (also {keys[index]})", key)
            continue
        keys[index] = key
        leaf = merkle.leaf_hash(manifest.leaf_bytes(row))
        leaves[32 * index : 32 * index + 32] = leaf
        if not merkle.verify_inclusion(leaf, index, size, [bytes.fromhex(p) for p in row["proof"] or []], root):
            detail = ("its fields no longer hash to its stored leaf hash" if leaf.hex() != row["leaf_hash"]
                      else "its leaf hash and proof do not lead to the signed root")
            problem(RECORD_CHANGED, f"record at leaf {index} was changed: {detail}", key)
    missing = [i for i, key in enumerate(keys) if key is None]
    for i in missing:
        around = [keys[j] for j in (i - 1, i + 1) if 0 <= j < size and keys[j] is not None]
        problem(RECORD_REMOVED,
                f"leaf {i} of {size} is missing" + (f" (next to {', '.join(around)})" if around else ""))
    if not missing and merkle.Tree([leaves]).root != root:
        problem(ROOT_MISMATCH, "the records recomputed do not give the signed Merkle root")
    _check_counts(tally, doc.get("counts") or {}, problem)
    return tally["pulled"]


def _check_counts(tally: dict[str, int], counts: dict[str, Any], problem: Any) -> None:
    for name, value in tally.items():
        if name in counts and counts[name] != value:
            problem(COUNTS_MISMATCH, f"the manifest counts {counts[name]} {name}, the stored records {value}")


class _SealChecker:
    """Signature and time stamp of a manifest; CA files resolved once per verification."""

    def __init__(self, ca_file: Path, tsa_ca: Path) -> None:
        self.ca_file = ca_file
        self.tsa_ca = tsa_ca

    def check(self, m: dict[str, Any], problem: Any) -> None:
        from lienthong.signing.cms import CmsError, verify_detached
        from lienthong.signing.keys import PLATFORM_SUBJECT

        if not m["signature"]:
            problem(UNSIGNED, "the manifest has no signature")
            return
        # A stamped signature is judged when the TSA saw it, so it outlives the platform certificate.
        stamped_at, stamp_problem = self._stamp(m)
        try:
            signer = verify_detached(bytes(m["signature"]), m["manifest"].encode("utf-8"), self.ca_file, at=stamped_at)
        except CmsError as exc:
            problem(BAD_SIGNATURE, f"the manifest signature does not verify: {exc}")
            if stamp_problem and stamp_problem[0] == UNSTAMPED:  # why it was judged now, not when made
                problem(*stamp_problem)
            return  # a stamp that does not match a bad signature says nothing more
        if signer.subject != PLATFORM_SUBJECT:
            problem(BAD_SIGNATURE, f"signed by {signer.subject.rfc4514_string()}, not by the platform key")
        if stamp_problem:
            problem(*stamp_problem)

    def _stamp(self, m: dict[str, Any]) -> tuple[dt.datetime | None, tuple[str, str] | None]:
        """When the TSA saw the signature, if a valid time stamp says so; else what is wrong with it."""
        if not m["timestamp"]:
            return None, (UNSTAMPED, "the manifest has no time stamp (the TSA did not answer when it was sealed)")
        try:
            return timestamp.verify(bytes(m["timestamp"]), bytes(m["signature"]), self.tsa_ca), None
        except Exception as exc:  # a token that cannot even be parsed proves nothing either
            return None, (BAD_TIMESTAMP, f"the time stamp does not verify: {exc}")


def _doc(m: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return manifest.decode(m["manifest"])
    except ValueError:
        return None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
