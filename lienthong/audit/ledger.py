"""Runs and per-record outcomes in the state database, through SQLAlchemy.

The ledger holds hashes, dossier codes and reasons, never personal data, so auditors can read
it freely. The incremental cursor is not kept apart: it is the ``cursor_after`` of the route's
latest settled run, so the ledger and the cursor cannot disagree.

Tamper evidence: every outcome is a leaf of its run's RFC 6962 Merkle tree and keeps its audit
path; every settled run gets a manifest (its facts, counts and the tree's root) signed by the
platform key, time-stamped, and chained to the route's previous manifest. ``audit verify``
recomputes all of it from these tables (lienthong.audit.verify).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
from functools import lru_cache
from typing import Any, Iterable, Iterator, Sequence

import orjson
from sqlalchemy import (JSON, Column, DateTime, Index, Integer, LargeBinary, MetaData, String, Table, Text,
                        UniqueConstraint, bindparam, create_engine, func, insert, inspect, select, text, tuple_, update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql import Select

from lienthong.audit import manifest
from lienthong.signing import merkle
from lienthong.connectors.streams import Cursor
from lienthong.logs import mask_personal_ids

ACKNOWLEDGED, QUARANTINED, PENDING = "acknowledged", "quarantined", "pending"
RUNNING, SUCCESS, FAILED = "running", "success", "failed"

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("run_id", String(200), primary_key=True),
    Column("route", String(100), nullable=False, index=True),
    Column("airflow_dag_id", String(250)),
    Column("airflow_run_id", String(250)),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(20), nullable=False),
    # none_as_null: "no cursor yet" must be SQL NULL, not the JSON value null, to be filtered.
    Column("cursor_before", JSON(none_as_null=True)),
    Column("cursor_after", JSON(none_as_null=True)),
    Column("counts", JSON),
    Column("quarantine_reasons", JSON),
)

outcomes = Table(
    "record_outcomes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(200), nullable=False, index=True),
    Column("route", String(100), nullable=False),
    Column("record_key", String(100), nullable=False),
    Column("source_id", String(100), nullable=False),
    Column("source_hash", String(64), nullable=False),
    Column("version", String(64)),
    Column("outcome", String(20), nullable=False),
    Column("reasons", JSON),
    Column("signature_digest", String(64)),  # the record's batch signature, stored once in batch_signatures
    Column("signer", String(100)),
    Column("ack_code", Integer),
    Column("ack_status", String(40)),
    Column("acked_at", DateTime(timezone=True)),
    Column("payload_hash", String(64)),  # content hash of the mapped payload, before signing
    Column("leaf_index", Integer),  # place in the run's Merkle tree
    Column("leaf_hash", String(64)),
    Column("proof", JSON),  # audit path to the run's root: hex hashes, nearest sibling first
    Index("ix_outcomes_delivery", "route", "record_key", "version", "outcome"),
    Index("ix_outcomes_record_key", "record_key"),
)
# A run read in leaf order, a page at a time: with the id in it, PostgreSQL seeks each page's
# start (leaf_index, id) > (...) in the index and sorts nothing.
RUN_LEAF_INDEX = Index("ix_outcomes_run_leaf", outcomes.c.run_id, outcomes.c.leaf_index, outcomes.c.id)
# Built once: push asks it for every part, and a query built per call is cyclic garbage that keeps
# the part's keys alive until a full collection, which a long stage rarely sees (at a million
# records, ~35 KB a part, 70 MB by the end of push).
ACKNOWLEDGED_VERSIONS = select(outcomes.c.record_key, outcomes.c.version).where(
    outcomes.c.route == bindparam("route"), outcomes.c.outcome == ACKNOWLEDGED,
    outcomes.c.record_key.in_(bindparam("keys", expanding=True)))

# A batch's JWS (~2 KB with its certificate chain) is the same for each of its hundreds of records:
# stored once, named by the SHA-256 of its text. A record's leaf still commits to the whole JWS
# (the ledger hands outcomes out with it joined back), so a changed or removed signature row
# changes the leaf of every record that names it, which ``audit verify`` then reports.
batch_signatures = Table(
    "batch_signatures", metadata,
    Column("digest", String(64), primary_key=True),
    Column("jws", Text, nullable=False),
)

run_manifests = Table(
    "run_manifests", metadata,
    Column("run_id", String(200), primary_key=True),
    Column("route", String(100), nullable=False),
    Column("seq", Integer, nullable=False),  # 1, 2, ... per route: the chain's order
    Column("manifest", Text, nullable=False),  # canonical JSON, exactly the signed bytes
    Column("manifest_hash", String(64), nullable=False),
    Column("prev_hash", String(64)),  # the route's previous manifest_hash; null for the first
    Column("signature", LargeBinary),  # detached CMS SignedData (DER) by the platform key
    Column("timestamp", LargeBinary),  # RFC 3161 TimeStampResp (DER) over the signature; null: unstamped
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Two runs of one route settling at once cannot both take the same place in the chain.
    UniqueConstraint("route", "seq", name="uq_run_manifests_route_seq"),
)


# Rows per INSERT: few round trips, and a chunk's rows with their proofs stay small in memory.
INSERT_CHUNK = 5000
# How long a writer waits for SQLite's write lock (see engine).
SQLITE_LOCK_WAIT_S = 600


class LedgerError(RuntimeError):
    """A change the ledger refuses because it would rewrite sealed history."""


@lru_cache(maxsize=8)
def engine(url: str) -> Engine:
    """One connection pool per database per process.

    JSON columns go through orjson rather than the standard library: every outcome row carries
    its audit path (a list of hex hashes) both ways, and json's pure-Python encoder was about a
    tenth of settling a run. Either reads what the other wrote.

    On SQLite a writer waits for the database's write lock up to :data:`SQLITE_LOCK_WAIT_S`
    rather than the driver's 5 s: a run's settle is one transaction, which for a million records
    holds the lock for a minute or more, and a second route's run opening, settling or booking a
    population call (:mod:`lienthong.connectors.pacing`) must wait its turn, not fail."""
    options: dict[str, Any] = {"connect_args": {"timeout": SQLITE_LOCK_WAIT_S}} if url.startswith("sqlite") else {}
    return create_engine(url, future=True, json_serializer=_json_text, json_deserializer=orjson.loads, **options)


def _json_text(value: Any) -> str:
    # Non-string keys become strings, as json.dumps makes them.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")


class Ledger:
    def __init__(self, url: str) -> None:
        self.engine = engine(url)
        metadata.create_all(self.engine)  # only creates what is missing
        # ... but not an index added to a table that already exists: ledgers older than it get it
        # here, in one statement, so that processes opening an old ledger at once do not race.
        with self.engine.begin() as conn:
            conn.execute(CreateIndex(RUN_LEAF_INDEX, if_not_exists=True))
        _move_inline_signatures(self.engine)

    def start_run(self, run_id: str, route: str, dag_id: str | None, airflow_run_id: str | None,
                  cursor_before: Cursor | None) -> None:
        """Idempotent: a retried extract task finds its run already open."""
        with self.engine.begin() as conn:
            if conn.execute(select(runs.c.run_id).where(runs.c.run_id == run_id)).first():
                return
            conn.execute(insert(runs).values(
                run_id=run_id, route=route, airflow_dag_id=dag_id, airflow_run_id=airflow_run_id,
                started_at=_now(), status=RUNNING,
                cursor_before=cursor_before.model_dump() if cursor_before else None,
            ))

    def open_runs(self, route: str) -> list[dict[str, Any]]:
        """Runs of ``route`` started but never settled, oldest first."""
        query = select(runs).where(runs.c.route == route, runs.c.status == RUNNING).order_by(runs.c.started_at)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def cursor(self, route: str) -> Cursor | None:
        """Where the next run starts: where the settled run that started last stopped.

        By start, not by settling: an abandoned run is settled from its staging by a later run,
        after runs that started after it had already read its window again and moved past it.
        Its cursor is behind theirs, and taking it would have the next run pull, verify and gate
        their records once more."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(runs.c.cursor_after)
                .where(runs.c.route == route, runs.c.finished_at.is_not(None), runs.c.cursor_after.is_not(None))
                .order_by(runs.c.started_at.desc(), runs.c.finished_at.desc()).limit(1)
            ).first()
        return Cursor.model_validate(row[0]) if row else None

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
        return dict(row) if row else None

    def acknowledged_versions(self, route: str, keys: Sequence[str]) -> set[tuple[str, str]]:
        """(record key, version) pairs the target has already acknowledged: never sent again."""
        found: set[tuple[str, str]] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                rows = conn.execute(ACKNOWLEDGED_VERSIONS, {"route": route, "keys": keys[start : start + 500]})
                found.update((k, v) for k, v in rows)
        return found

    def settle(self, run_id: str, records: Iterable[dict[str, Any]], status: str,
               cursor_after: Cursor | None, counts: dict[str, Any],
               reasons: dict[str, int], *, facts: dict[str, Any] | None = None,
               seal: manifest.Sealer | None = None, leaves: merkle.LeafSpool | None = None) -> None:
        """Every record's outcome, the run's close and its manifest in one transaction.

        Record ``i`` becomes leaf ``i`` of the run's tree and keeps its audit path. ``facts``
        (:func:`lienthong.audit.manifest.route_facts`) go into the manifest; ``seal`` signs and
        time-stamps it (without one the manifest is stored unsigned and verify says so). A
        retried settle takes the place in the chain its first attempt took, so the chain never
        forks; re-settling a run that later runs already chain to is refused.

        ``records`` is gone through twice, so that a run's outcomes never sit in memory all at
        once (a stored row with its proof costs kilobytes; a million records would not fit): once
        for the leaf hashes the tree is built from, once to store each outcome with its audit
        path, a chunk at a time. Pass a list, or a re-iterable that yields the same outcomes each
        time (a run's, recomputed from its staging); a one-shot iterator is refused, not found
        empty the second time. ``leaves``, every record's :func:`outcome_leaf` in order, spares the
        first pass to a caller that has already gone through the records. The tree is kept in a
        temporary file (:class:`~lienthong.signing.merkle.SpooledTree`), so its memory does not
        grow with the run. Each stored record is checked against the leaf it gets a proof for, so
        records that changed between the passes fail the settle instead of sealing proofs that lead
        nowhere.
        """
        if iter(records) is records:
            raise TypeError("settle goes through the records twice: pass a list or a re-iterable, not an iterator")
        run = self.run(run_id)
        if run is None:
            raise LedgerError(f"run {run_id} was never started")
        with contextlib.ExitStack() as spools:
            if leaves is None:
                leaves = spools.enter_context(merkle.LeafSpool())
                for record in records:
                    leaves.add(outcome_leaf(record))
            tree = leaves.tree()
            settled_at = _now()
            cursor = cursor_after.model_dump() if cursor_after else None
            with self.engine.begin() as conn:
                seq, prev_hash = _place_in_chain(conn, run_id, run["route"])
                text, digest = manifest.encode(manifest.document(
                    run_id=run_id, route=run["route"], seq=seq, prev_manifest_hash=prev_hash, status=status,
                    settled_at=settled_at, cursor_before=run["cursor_before"], cursor_after=cursor,
                    counts=counts, quarantine_reasons=reasons, tree_size=tree.size, merkle_root=tree.root.hex(),
                    facts=facts or {}))
                sealed = seal(text.encode("utf-8")) if seal else None
                conn.execute(outcomes.delete().where(outcomes.c.run_id == run_id))
                rows = _leaf_rows(run_id, run["route"], records, tree)
                while chunk := list(itertools.islice(rows, INSERT_CHUNK)):
                    conn.execute(insert(outcomes), _signatures_stored_apart(conn, chunk))
                conn.execute(update(runs).where(runs.c.run_id == run_id).values(
                    finished_at=settled_at, status=status, cursor_after=cursor,
                    counts=counts, quarantine_reasons=reasons,
                ))
                conn.execute(run_manifests.delete().where(run_manifests.c.run_id == run_id))
                conn.execute(insert(run_manifests).values(
                    run_id=run_id, route=run["route"], seq=seq, manifest=text, manifest_hash=digest,
                    prev_hash=prev_hash, signature=sealed.signature if sealed else None,
                    timestamp=sealed.timestamp if sealed else None, created_at=settled_at,
                ))

    def outcomes(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.each_outcome(run_id))

    def each_outcome(self, run_id: str, chunk: int | None = None, *, in_leaf_order: bool = False,
                     outcome: str | None = None) -> Iterator[dict[str, Any]]:
        """The run's outcomes (only those of kind ``outcome`` if given), ``chunk`` rows read at a
        time (by default ``INSERT_CHUNK``, read when called so that tests can make pages small):
        a million-record run's rows, with their proofs and signatures, do not fit in memory at once.
        In the order they were stored, or ``in_leaf_order`` as auditors read a run, rows without a
        leaf index last (only a tampered ledger has them). Each page is one query, so taking the
        first ``n`` with ``chunk=n`` reads ``n`` rows. The records of a batch share one copy of its
        signature, as they share one stored row."""
        chunk = chunk or INSERT_CHUNK
        where = [outcomes.c.run_id == run_id] + ([outcomes.c.outcome == outcome] if outcome else [])
        if in_leaf_order:
            pages = itertools.chain(
                self._pages(where + [outcomes.c.leaf_index.is_not(None)], (outcomes.c.leaf_index, outcomes.c.id),
                            chunk),
                self._pages(where + [outcomes.c.leaf_index.is_(None)], (outcomes.c.id,), chunk))
        else:
            pages = self._pages(where, (outcomes.c.id,), chunk)
        signatures: dict[str, str] = {}
        for rows in pages:
            for row in rows:
                if row["signature"] is not None:
                    row["signature"] = signatures.setdefault(row["signature"], row["signature"])
            yield from rows

    def _pages(self, where: list[Any], order: tuple[Column, ...], chunk: int) -> Iterator[list[dict[str, Any]]]:
        """Stored outcomes matching ``where`` in ``order`` (unique: it ends with the id), a page at
        a time, each page starting after the last one's key rather than at an offset, so a page
        deep into a million rows costs what the first one does."""
        after: tuple[Any, ...] | None = None
        while True:
            query = _stored_outcomes().where(*where).order_by(*order).limit(chunk)
            if after is not None:
                query = query.where(tuple_(*order) > tuple_(*after))
            with self.engine.connect() as conn:
                rows = [dict(r) for r in conn.execute(query).mappings()]
            yield rows
            if len(rows) < chunk:
                return
            after = tuple(rows[-1][column.name] for column in order)

    def outcome_totals(self, run_id: str) -> dict[str, int]:
        """Stored outcome rows of the run by kind, counted by the database: the rows themselves,
        not the run's counts, which a run still open has not got and a changed run row misstates."""
        query = (select(outcomes.c.outcome, func.count()).where(outcomes.c.run_id == run_id)
                 .group_by(outcomes.c.outcome))
        with self.engine.connect() as conn:
            return {kind: n for kind, n in conn.execute(query)}

    def stored_records(self) -> dict[str, int]:
        """Outcome rows stored per run, in one query: what verify's quick mode holds against each
        manifest's tree size without reading a row."""
        query = select(outcomes.c.run_id, func.count()).group_by(outcomes.c.run_id)
        with self.engine.connect() as conn:
            return {run_id: n for run_id, n in conn.execute(query)}

    def runs(self, route: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        query = select(runs).order_by(runs.c.started_at.desc())
        if route is not None:
            query = query.where(runs.c.route == route)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def manifests(self, route: str | None = None) -> list[dict[str, Any]]:
        """Manifest rows in chain order (route, seq)."""
        query = select(run_manifests).order_by(run_manifests.c.route, run_manifests.c.seq)
        if route is not None:
            query = query.where(run_manifests.c.route == route)
        with self.engine.connect() as conn:
            return [_with_tree(dict(r)) for r in conn.execute(query).mappings()]

    def manifest(self, run_id: str) -> dict[str, Any] | None:
        """The run's manifest row, with ``tree_size`` and ``merkle_root`` read from the signed text."""
        with self.engine.connect() as conn:
            row = conn.execute(select(run_manifests).where(run_manifests.c.run_id == run_id)).mappings().first()
        return _with_tree(dict(row)) if row else None

    @staticmethod
    def manifest_document(row: dict[str, Any]) -> dict[str, Any]:
        return manifest.decode(row["manifest"])

    def trace(self, record_key: str) -> list[dict[str, Any]]:
        """Every outcome of one record key, oldest run first, with its run's route and status."""
        query = (_stored_outcomes().add_columns(runs.c.status.label("run_status"), runs.c.started_at)
                 .join(runs, runs.c.run_id == outcomes.c.run_id)
                 .where(outcomes.c.record_key == record_key)
                 .order_by(runs.c.started_at, outcomes.c.leaf_index))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def latest_run(self, route: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.route == route)
                               .order_by(runs.c.started_at.desc()).limit(1)).mappings().first()
        return dict(row) if row else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _outcome_row(record: dict[str, Any]) -> dict[str, Any]:
    """The stored columns of an outcome: reasons masked, times in UTC (SQLite keeps no zone)."""
    row = {name: record.get(name) for name in manifest.LEAF_FIELDS}
    if row["reasons"]:  # a portal or gate message may quote a value: mask before it is hashed
        row["reasons"] = [{**r, "message": mask_personal_ids(str(r.get("message", "")))} for r in row["reasons"]]
    row["acked_at"] = manifest.utc_time(row["acked_at"])
    return row


def outcome_leaf(record: dict[str, Any]) -> bytes:
    """The Merkle leaf an outcome becomes when settled: the hash of its fields as stored (masked)."""
    return _row_leaf(_outcome_row(record))


def _row_leaf(row: dict[str, Any]) -> bytes:
    return merkle.leaf_hash(manifest.leaf_bytes(row))


def _leaf_rows(run_id: str, route: str, records: Iterable[dict[str, Any]],
               tree: merkle.Tree) -> Iterator[dict[str, Any]]:
    """The stored rows of ``records``, each with its place in ``tree`` and its audit path."""
    index = -1
    for index, record in enumerate(records):
        row = _outcome_row(record)
        leaf = _row_leaf(row)
        if index >= tree.size or leaf != tree.leaf(index):
            raise LedgerError(f"run {run_id}: record {index} is not the one hashed into the run's tree "
                              "(the records changed between the two passes of the settle)")
        yield {"run_id": run_id, "route": route, **row, "leaf_index": index, "leaf_hash": leaf.hex(),
               "proof": [p.hex() for p in tree.proof(index)]}
    if index + 1 != tree.size:
        raise LedgerError(f"run {run_id}: {index + 1} records stored but {tree.size} hashed into the run's tree "
                          "(the records changed between the two passes of the settle)")


def _stored_outcomes() -> Select:
    """Outcome rows as settled: each with its batch signature's JWS joined back as ``signature``
    (null where the signature row is missing, which verify then finds as a changed record)."""
    columns = [c for c in outcomes.c if c is not outcomes.c.signature_digest]
    return (select(*columns, batch_signatures.c.jws.label("signature"))
            .select_from(outcomes.outerjoin(batch_signatures,
                                            outcomes.c.signature_digest == batch_signatures.c.digest)))


def _signatures_stored_apart(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` naming their signature by digest; each signature hashed once, not once a record,
    and written unless stored already (by an earlier chunk, a retried settle or another run)."""
    digests: dict[str, str] = {}
    for row in rows:
        jws = row.pop("signature")
        if jws is not None and jws not in digests:
            digests[jws] = signature_digest(jws)
        row["signature_digest"] = None if jws is None else digests[jws]
    if digests:
        present = set(conn.execute(select(batch_signatures.c.digest)
                                   .where(batch_signatures.c.digest.in_(list(digests.values())))).scalars())
        missing = [{"digest": d, "jws": jws} for jws, d in digests.items() if d not in present]
        if missing:
            conn.execute(insert(batch_signatures), missing)
    return rows


def signature_digest(jws: str) -> str:
    return hashlib.sha256(jws.encode("utf-8")).hexdigest()


def _move_inline_signatures(engine: Engine) -> None:
    """Ledgers settled before batch signatures were stored apart kept each record's JWS in its
    own row (``record_outcomes.signature``): move them to ``batch_signatures`` once, so those
    runs read and verify as they did. Rows are moved a chunk at a time, by id."""
    if "signature" not in {c["name"] for c in inspect(engine).get_columns(outcomes.name)}:
        return
    with engine.begin() as conn:  # looked at again inside: another process may be moving them too
        columns = {c["name"] for c in inspect(conn).get_columns(outcomes.name)}
        if "signature" not in columns:
            return
        if "signature_digest" not in columns:
            conn.execute(text("ALTER TABLE record_outcomes ADD COLUMN signature_digest VARCHAR(64)"))
        after = 0
        while rows := conn.execute(text(
                "SELECT id, signature FROM record_outcomes WHERE id > :after AND signature IS NOT NULL "
                "ORDER BY id LIMIT :chunk"), {"after": after, "chunk": INSERT_CHUNK}).mappings().all():
            moved = _signatures_stored_apart(conn, [dict(r) for r in rows])
            conn.execute(text("UPDATE record_outcomes SET signature_digest = :signature_digest WHERE id = :id"), moved)
            after = rows[-1]["id"]
        conn.execute(text("ALTER TABLE record_outcomes DROP COLUMN signature"))


def _place_in_chain(conn: Connection, run_id: str, route: str) -> tuple[int, str | None]:
    """(seq, previous manifest hash) for the run's manifest: its old place when re-settled."""
    head = conn.execute(select(run_manifests).where(run_manifests.c.route == route)
                        .order_by(run_manifests.c.seq.desc()).limit(1)).mappings().first()
    mine = conn.execute(select(run_manifests).where(run_manifests.c.run_id == run_id)).mappings().first()
    if mine is None:
        return (head["seq"] + 1, head["manifest_hash"]) if head else (1, None)
    if head["run_id"] != run_id:
        raise LedgerError(f"run {run_id} is sealed and run {head['run_id']} already chains after it: "
                          "its outcomes can no longer be rewritten")
    return mine["seq"], mine["prev_hash"]


def _with_tree(row: dict[str, Any]) -> dict[str, Any]:
    tree = manifest.decode(row["manifest"]).get("tree", {})
    return {**row, "tree_size": tree.get("size"), "merkle_root": tree.get("root")}
