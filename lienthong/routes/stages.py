"""The stages of a route run, one function per Airflow task, each resumable from staging.

Every stage reads the parts of the stages before it and writes one line per pulled record, in
order (null where it has nothing to say about a record), so that the final ``record`` stage can
account for every record pulled: acknowledged, quarantined with its reasons, or pending.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import itertools
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any, Callable, Iterable, Iterator, Mapping, ParamSpec, TypeVar

from lienthong.audit.ledger import (ACKNOWLEDGED, FAILED, PENDING, QUARANTINED, SUCCESS, Ledger, outcome_leaf)
from lienthong.audit.manifest import platform_sealer, route_facts
from lienthong.connectors.streams import Cursor
from lienthong.gates import verdicts
from lienthong.logs import get_logger
from lienthong.mappings.engine import MappingEngine
from lienthong.routes.route import Route, get_route
from lienthong.settings import MAX_PARTITIONS, PARTITIONS_CONF_KEY, settings
from lienthong.signing.canonical import content_hash
from lienthong.signing.jws import signer_thumbprint
from lienthong.signing.merkle import LeafSpool
from lienthong.signing.records import SIGNATURE, VERSION, seal_batch
from lienthong.staging import RANGE_PARTS, STAGES, RunStaging, StageDir, purge_route

log = get_logger(__name__)


# Parts the gate validates at once (see gate_records): 20 parts of a 500-row page, 10,000 records.
# Timed alone, the suite took 0.85 s over 10,000 records and 1.39 s over 50,000; but a group holds
# ~7 KB a record while it is judged, and with groups of 50,000 a 100,000-record run peaked at 709 MB
# instead of 440 MB while its gate took no less time (26.5 s, against 26.8 s with 10,000 in
# another run: this machine's noise).
GATE_GROUP_PARTS = 20


# The cyclic collector's thresholds while a stage runs (see _stage): a young collection once
# 50,000 more objects are alive than at the last one, instead of 700; the older ones as usual.
GC_THRESHOLD = (50_000, 10, 10)

# A stage's way of saying how far it got (counts so far), for whoever shows progress.
Report = Callable[[dict[str, Any]], None]


class RunIncomplete(RuntimeError):
    """Raised by the last stage when records remain pending, so the DAG run shows as failed."""


P = ParamSpec("P")
T = TypeVar("T")


def _stage(work: Callable[P, T]) -> Callable[P, T]:
    """A stage with the objects that exist when it starts frozen out of the cyclic collector, and
    the collector run less often.

    Each full collection walks every object the process holds; in a stage that is mostly the
    imported libraries' (great-expectations, zeep, SQLAlchemy, pandas), which never become
    garbage, and the millions of small dicts a stage makes set collections off again and again.
    At 20,000 records (one process, a loaded machine) the seven stages spent 6.3 s in the
    collector, 2.4 s with the freeze. Those dicts are records and parts, freed by their reference
    counts when a part is done, not cycles: a young collection every 700 objects (Python's
    default) found little to free. With :data:`GC_THRESHOLD` the seven stages spent 0.4 s in the
    collector at 100,000 records, instead of 2.2 s. Both are undone when the stage ends, so nothing
    outlives it that would not have otherwise."""

    @functools.wraps(work)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        threshold = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLD)
        gc.freeze()
        try:
            return work(*args, **kwargs)
        finally:
            gc.unfreeze()
            gc.set_threshold(*threshold)

    return run


def run_id_for(route_name: str, airflow_run_id: str) -> str:
    """Deterministic, so every task and every retry of one DAG run finds the same staging."""
    return f"{route_name}__{re.sub(r'[^A-Za-z0-9]+', '-', airflow_run_id).strip('-')}"


def _staging(run_id: str) -> RunStaging:
    return RunStaging(settings().staging_dir, run_id)


def _ledger() -> Ledger:
    return Ledger(settings().state_db_url)


@_stage
def extract(route_name: str, run_id: str, dag_id: str | None = None, airflow_run_id: str | None = None,
            wanted: int | None = None) -> dict[str, Any]:
    """Open the run and pull its window in one pass or, when it is to run in several partitions
    (``wanted``, else the setting) and its source can cut its rows into ranges, cut it into one
    range a partition for :func:`pull`: the pull is then shared by the workers, as the rest is."""
    from lienthong.connectors.sources import SplitSource, open_source

    route = get_route(route_name)
    ledger = _ledger()
    if ledger.run(run_id) is None:  # this run's first attempt, not a retry of its extract
        settle_abandoned(route.name, ledger)
    ledger.start_run(run_id, route.name, dag_id, airflow_run_id, ledger.cursor(route.name))
    staging = _staging(run_id)
    stage = staging.stage("extract")
    if stage.done:
        return stage.counts()
    if (ranges := staging.ranges()) is not None:
        return {"ranges": len(ranges)}
    source = open_source(route.protocol, route.stream, route.source_conn)
    before = _cursor_before(ledger, run_id)
    partitions, parts = wanted or settings().partitions, stage.parts()  # parts: a retry's, pulled in one pass
    if partitions > 1 and isinstance(source, SplitSource) and not parts:
        if cuts := source.split(before, partitions):
            bounds = [before, *cuts, None]
            ranges = staging.plan_ranges([{"after": _dumped(a), "until": _dumped(u)}
                                          for a, u in zip(bounds, bounds[1:])])
            log.info("run %s: cut into %d ranges, each pulled by its partition", run_id, len(ranges))
            return {"ranges": len(ranges)}
    counts = _pull_into(route, stage, source.read(_resume_point(stage, parts) or before), parts, 0,
                        stage.report_progress)
    stage.mark_done(counts)
    log.info("run %s: pulled %d records in %d parts", run_id, counts["records"], len(stage.parts()))
    return counts


@_stage
def pull(route_name: str, run_id: str, partition: int | None = None) -> dict[str, Any]:
    """Pull the ranges :func:`extract` cut the run into: one partition's, or every one in turn.
    A run extract pulled in one pass has nothing left to pull."""
    from lienthong.connectors.sources import open_source

    route = get_route(route_name)
    staging = _staging(run_id)
    stage = staging.stage("extract")
    ranges = staging.ranges()
    if ranges is None:
        if not stage.done:
            raise RuntimeError(f"run {run_id}: extract has neither pulled the run nor cut it into ranges")
        return stage.counts()
    source = open_source(route.protocol, route.stream, route.source_conn)

    def pull_range(k: int, parts: list[int], report: Report) -> dict[str, Any]:
        """Range ``k``, resumed after its last part if a previous attempt wrote some."""
        after, until = (Cursor.model_validate(ranges[k][b]) if ranges[k][b] else None for b in ("after", "until"))
        batches = source.read(_resume_point(stage, parts) or after, until=until)
        try:
            return _pull_into(route, stage, batches, parts, k * RANGE_PARTS, report, room=RANGE_PARTS)
        except RangeFull as exc:
            raise RangeFull(f"run {run_id}: range {k + 1} of {len(ranges)} {exc}; run the backfill in more "
                            "partitions, so that each range is smaller") from None

    for k in range(len(ranges)) if partition is None else (partition,):
        _by_partition(staging, stage, k, functools.partial(pull_range, k))
    return stage.counts() if partition is None else stage.partition_counts(partition)


class RangeFull(RuntimeError):
    """A range's rows need more parts than its numbers leave before the next range's."""


def _pull_into(route: Route, stage: StageDir, batches: Iterable[list[tuple[Cursor, dict[str, Any]]]],
               parts: list[int], first: int, report: Report, room: int | None = None) -> dict[str, Any]:
    """Each batch as one part of extract, numbered on after ``parts`` (what a previous attempt
    wrote, counted in) or from ``first``: each row with its cursor and the hash of what was read.

    ``room``: how many part numbers there are from ``first`` on. A part past them would take the
    next range's number, replacing its rows or being read as its; the pull stops before it
    instead, and its range, not pulled to its end, holds the cursor back."""
    index = parts[-1] + 1 if parts else first
    pulled = sum(len(stage.read_part(i)) for i in parts)
    for batch in batches:
        if room is not None and index >= first + room:
            raise RangeFull(f"holds more than {room} parts of up to {route.stream.page_size} rows")
        stage.write_part(index, (
            {"id": str(row[route.stream.primary_key]), "cursor": cursor.model_dump(),
             "source_hash": content_hash(row), "row": row}
            for cursor, row in batch
        ))
        index += 1
        pulled += len(batch)
        report({"records": pulled})
    return {"records": pulled}


def _dumped(cursor: Cursor | None) -> dict[str, Any] | None:
    return cursor.model_dump() if cursor else None


def partitions(run_id: str, wanted: int | None = None) -> int:
    """How many partitions the stages after extract run in: planned once, by extract, into
    ``wanted`` (the run's own count, see :func:`requested_partitions`) or else the setting
    (``LIENTHONG_PARTITIONS``), one a range if extract cut the run into ranges. A retried
    extract, or a worker with another setting, finds the first plan, whatever it asks for:
    partitions already worked must keep their parts."""
    return len(_staging(run_id).partitions(wanted or settings().partitions))


def requested_partitions(params: Mapping[str, Any]) -> int | None:
    """The partition count a run asked for in its conf (``{"partitions": N}``, which Airflow
    merges into the run's params), or None to leave it to the setting.

    Checked here as well as by the DAG's param schema: the schema lets ``3.0`` through as an
    integer, and a deployment may have turned ``[core] dag_run_conf_overrides_params`` off or a
    caller may pass params of its own. The extract task calls this before it pulls anything, so a
    bad value costs no read of the source and no open run in the ledger.
    """
    value = params.get(PARTITIONS_CONF_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARTITIONS:
        raise ValueError(f"DAG run conf {PARTITIONS_CONF_KEY!r} is {value!r}: it must be a whole number from 1 "
                         f"to {MAX_PARTITIONS}, or absent to use LIENTHONG_PARTITIONS")
    return value


def settle_abandoned(route_name: str, ledger: Ledger) -> None:
    """Settle, from their staging, the route's runs whose worker died before ``record`` ran.

    A worker killed mid-run leaves its run open in the ledger and its staging on disk. Settling
    it before the next run reads the cursor records what it did (what the portal acknowledged,
    what the gate quarantined) and leaves the rest pending, so the next run pulls exactly those
    again, and the portal's answer to a repeat of a push whose reply was lost is a duplicate,
    never a second copy. A run still writing its staging (another worker) is left alone.
    """
    s = settings()
    for run in ledger.open_runs(route_name):
        started = run["started_at"]
        if started.tzinfo is None:  # SQLite gives it back without its zone: UTC
            started = started.replace(tzinfo=dt.timezone.utc)
        idle = time.time() - (_staging(run["run_id"]).last_written() or started.timestamp())
        if idle < s.abandoned_after_s:
            continue
        log.warning("run %s of %s was abandoned (nothing written for %.0f s): settling it from its staging",
                    run["run_id"], route_name, idle)
        try:
            record(route_name, run["run_id"])
        except RunIncomplete as exc:
            log.warning("abandoned run settled as failed: %s", exc)


def _cursor_before(ledger: Ledger, run_id: str) -> Cursor | None:
    """The cursor the run started from, as recorded: a retried extract reads the same window."""
    value = (ledger.run(run_id) or {}).get("cursor_before")
    return Cursor.model_validate(value) if value else None


def _resume_point(stage: StageDir, parts: list[int]) -> Cursor | None:
    """The position after the last of ``parts`` (those a previous attempt pulled), if any."""
    last = stage.read_part(parts[-1]) if parts else None
    return Cursor.model_validate(last[-1]["cursor"]) if last else None


@_stage
def verify(route_name: str, run_id: str, partition: int | None = None) -> dict[str, Any]:
    """Ask the population database about every applicant, in batches, concurrently.

    Routes whose target does not name a citizen (status sync) pass through with nothing to ask.
    """
    from lienthong.connectors.soap import PopulationVerifier, Subject

    route = get_route(route_name)
    staging = _staging(run_id)
    source, stage = staging.stage("extract"), staging.stage("verify")
    if route.population_conn is None or not route.target.verify_citizens:
        return _by_partition(staging, stage, partition, lambda parts, report: {})

    def work(parts: list[int], report: Report) -> dict[str, Any]:
        engine = MappingEngine(route.spec)
        with closing(PopulationVerifier.from_connection(route.population_conn)) as verifier:

            def ask(index: int) -> list[dict[str, Any]]:
                subjects = [Subject(**(engine.subject(r["row"]) or {})) for r in source.read_part(index)]
                return [{"status": v.status, "fields": list(v.fields)} for v in verifier.verify(subjects)]

            # Two parts at once: the verifier's calls wait on the network while answers of the
            # other part are parsed, and it keeps its own limit on calls in flight.
            return _judge_parts(stage, parts, ask, report, at_once=2)

    return _by_partition(staging, stage, partition, work)


@_stage
def map_records(route_name: str, run_id: str, partition: int | None = None) -> dict[str, Any]:
    """Source rows to target payloads; errors stay with their record."""
    route = get_route(route_name)
    staging = _staging(run_id)
    source, verified, stage = staging.stage("extract"), staging.stage("verify"), staging.stage("map")

    def work(parts: list[int], report: Report) -> dict[str, Any]:
        engine = MappingEngine(route.spec)
        tally = {"records": 0, "with_errors": 0}

        def map_part(index: int) -> list[dict[str, Any]]:
            rows = source.read_part(index)
            verifications = _part_or_nulls(verified, index, len(rows))
            return [_mapped(engine, r["row"], v) for r, v in zip(rows, verifications, strict=True)]

        for index in parts:
            mapped = _resumable(stage, index, map_part)
            tally["records"] += len(mapped)
            tally["with_errors"] += sum(1 for m in mapped if m["errors"])
            report(tally)
        return tally

    return _by_partition(staging, stage, partition, work)


def _mapped(engine: MappingEngine, row: dict[str, Any], verification: dict[str, Any] | None) -> dict[str, Any]:
    mapped = engine.map(row)
    return {"payload": mapped.payload, "errors": mapped.errors, "subject": engine.subject(row),
            "verification": verification}


@_stage
def gate_records(route_name: str, run_id: str, partition: int | None = None) -> dict[str, Any]:
    """Pass, quarantine or pending per record, by the suite, the domain rules and verification.

    great-expectations costs about a tenth of a second a validation before it reads a row (0.12 s
    over 100 rows in a warm process; it seemed 0.8 s timed alone), so parts are validated in
    groups of :data:`GATE_GROUP_PARTS`, at fixed boundaries within their partition: a resumed
    gate validates exactly the groups it validated before, and a batch-wide rule (unique codes)
    sees the same batch.
    """
    from lienthong.gates import gate

    route = get_route(route_name)
    staging = _staging(run_id)
    mapped, stage = staging.stage("map"), staging.stage("gate")

    def work(parts: list[int], report: Report) -> dict[str, Any]:
        judged: dict[int, list[dict[str, Any]]] = {}

        def judge(index: int) -> list[dict[str, Any]]:
            """The verdicts of ``index``, from one validation of its whole group of parts."""
            if index not in judged:
                gate.suite_gate(route.suite_file)  # great-expectations loads here, the first time:
                gc.freeze()  # frozen with what the stage started with (see _stage)
                position = parts.index(index) // GATE_GROUP_PARTS * GATE_GROUP_PARTS
                group = parts[position : position + GATE_GROUP_PARTS]
                records = [mapped.read_part(i) for i in group]
                given = iter(gate.evaluate([r for part in records for r in part], route.suite_file))
                judged.clear()
                for i, part in zip(group, records):
                    judged[i] = [{"status": v.status, "reasons": v.reasons}
                                 for v in itertools.islice(given, len(part))]
            return judged[index]

        return _judge_parts(stage, parts, judge, report)

    return _by_partition(staging, stage, partition, work)


@_stage
def sign(route_name: str, run_id: str, partition: int | None = None) -> dict[str, Any]:
    """Seal the records of each part that passed the gate as one batch: versions (content hashes),
    one JWS with the chain over the part's hash tree, and each record's proof into it."""
    from lienthong.signing.keys import load_signer

    route = get_route(route_name)
    staging = _staging(run_id)
    mapped, gated, stage = staging.stage("map"), staging.stage("gate"), staging.stage("sign")

    def work(parts: list[int], report: Report) -> dict[str, Any]:
        signer = load_signer(settings().keys_dir, route.signing_key)

        def seal_part(index: int) -> list[dict[str, Any] | None]:
            passed = [m["payload"] if v["status"] == verdicts.PASS else None
                      for m, v in zip(mapped.read_part(index), gated.read_part(index), strict=True)]
            sealed = iter(seal_batch([p for p in passed if p is not None], signer))
            return [None if p is None else next(sealed) for p in passed]

        signed = 0
        for index in parts:
            signed += sum(1 for record in _resumable(stage, index, seal_part) if record is not None)
            report({"records": signed})
        return {"records": signed}

    return _by_partition(staging, stage, partition, work)


@_stage
def push(route_name: str, run_id: str, partition: int | None = None) -> dict[str, Any]:
    """Send sealed records in batches, several parts at once; acks are written after each batch,
    so a retry resumes.

    A record version the portal already acknowledged (in an earlier run) is not sent again. Parts
    are pushed by ``concurrency`` threads (the portal connection's extra), each with its own sink,
    so the portal's checking of one batch overlaps the sending of the next. When the portal stays
    unavailable, parts not started are left and the first failure is raised once the parts in
    flight have written their acks.
    """
    from lienthong.connectors.rest import PortalSink, PortalUnavailable

    route = get_route(route_name)
    staging = _staging(run_id)
    signed, stage = staging.stage("sign"), staging.stage("push")
    ledger = _ledger()

    def work(parts: list[int], report: Report) -> dict[str, Any]:
        sinks: list[PortalSink] = []
        local = threading.local()

        def sink() -> PortalSink:
            if not hasattr(local, "sink"):
                local.sink = PortalSink.from_connection(route.portal_conn)
                sinks.append(local.sink)
            return local.sink

        def push_part(index: int) -> list[dict[str, Any] | None]:
            sealed = signed.read_part(index)
            acks: list[dict[str, Any] | None] = (
                stage.read_part(index) if stage.has_part(index) else [None] * len(sealed))
            todo = [i for i, record in enumerate(sealed) if record is not None and acks[i] is None]
            if todo:
                known = ledger.acknowledged_versions(route.name, [sealed[i][route.spec.key] for i in todo])
                for i in todo:
                    if (sealed[i][route.spec.key], sealed[i][VERSION]) in known:
                        acks[i] = {"error_code": 0, "status": "already_acknowledged", "acknowledged": True,
                                   "message": "acknowledged in an earlier run", "at": _now()}
                todo = [i for i in todo if acks[i] is None]
            portal = sink()
            for start in range(0, len(todo), portal.batch_size):
                chunk = todo[start : start + portal.batch_size]
                try:
                    answers = portal.push([sealed[i] for i in chunk], service=route.target.service)
                except PortalUnavailable:
                    stage.write_part(index, acks)
                    raise
                at = _now()
                for i, ack in zip(chunk, answers, strict=True):
                    acks[i] = {"error_code": ack.error_code, "status": ack.status, "acknowledged": ack.acknowledged,
                               "message": ack.message, "at": at}
                stage.write_part(index, acks)
            if not stage.has_part(index):
                stage.write_part(index, acks)
            return acks

        tally: dict[str, int] = {}
        pool = ThreadPoolExecutor(max_workers=sink().concurrency, thread_name_prefix="push")
        try:
            for acks in pool.map(push_part, parts):
                _tally(tally, (a["status"] for a in acks if a))
                report({"records": sum(tally.values()), **tally})
        finally:
            pool.shutdown(cancel_futures=True)
            for portal in sinks:
                portal.close()
        return tally

    return _by_partition(staging, stage, partition, work)


@_stage
def account(route_name: str, run_id: str, partition: int | None = None) -> dict[str, Any]:
    """Each record's outcome, for the partitions whose push is done, staged for ``record``.

    Half of ``record``'s work needs nothing of the other partitions: reading every stage's part
    and hashing each outcome. Done here, in the mapped task group, it is shared by the workers
    and only the settle, which must see the whole run, is left to one. An outcome is only
    final once its partition is pushed, so this refuses a partition whose push is not done;
    ``record`` computes the outcomes of any partition not accounted for (its push failed, or
    its worker died) itself.
    """
    route = get_route(route_name)
    staging = _staging(run_id)
    outcomes = _RunOutcomes(route, staging)
    pushed = staging.stage("push")
    plan = staging.partitions(settings().partitions)
    for k in range(len(plan)) if partition is None else (partition,):
        if not pushed.partition_done(k):
            raise RuntimeError(f"run {run_id}: partition {k + 1} of {len(plan)} is not pushed yet, so its "
                               "outcomes are not final; record settles it from its staging")

    def work(parts: list[int], report: Report) -> dict[str, Any]:
        tally: dict[str, int] = {}
        for index in parts:
            _tally(tally, (outcome["outcome"] for outcome in outcomes.compute(index)))
            report({"records": sum(tally.values()), **tally})
        return tally

    return _by_partition(staging, outcomes.stage, partition, work)


@_stage
def record(route_name: str, run_id: str) -> dict[str, Any]:
    """Settle every pulled record in the ledger and move the cursor past what is settled.

    Runs whatever happened upstream. The cursor stops before the first pending record, so the
    next run pulls it again; records after it that were acknowledged are then skipped at push.
    """
    route = get_route(route_name)
    staging = _staging(run_id)
    ledger = _ledger()
    run = ledger.run(run_id)
    if run is None:
        raise RunIncomplete(f"run {run_id} never started: extract did not run")
    outcomes = _RunOutcomes(route, staging)
    stuck = False  # a pending record was met: the cursor moves no further
    settled_cursor = run["cursor_before"]  # a dict, as ledger and staging keep it; a Cursor at the end
    counts = dict.fromkeys(("pulled", "quarantined", "pushed", "acknowledged", "already_acknowledged",
                            "duplicates", "rejected", "pending"), 0)
    reasons: dict[str, int] = {}
    unpulled = _first_unpulled_range(staging)
    # Parts from the range after it on may not move the cursor: what they hold comes after rows unread.
    held_from = (unpulled[0] + 1) * RANGE_PARTS if unpulled else None
    with LeafSpool() as leaves:  # what stays of each outcome until the settle: its leaf hash, on disk
        for index, part in outcomes.parts():
            stuck = stuck or (held_from is not None and index >= held_from)
            for outcome in part:
                leaves.add(bytes.fromhex(outcome["leaf"]))  # the settle checks each against its outcome
                counts["pulled"] += 1
                _count(counts, reasons, outcome)
                if outcome["outcome"] == PENDING:
                    stuck = True
                elif not stuck:
                    settled_cursor = outcome["cursor"]
        done = {name: staging.stage(name) for name in STAGES if staging.stage(name).done}
        counts["stages"] = {name: stage.counts() for name, stage in done.items()}
        complete = len(done) == len(STAGES)
        status = SUCCESS if complete and counts["pending"] == 0 else FAILED
        last_settled = Cursor.model_validate(settled_cursor) if settled_cursor else None
        ledger.settle(run_id, _StagedOutcomes(outcomes.stage), status, last_settled, counts, reasons,
                      facts=route_facts(route), seal=platform_sealer(settings().keys_dir), leaves=leaves)
    log.info("run %s settled: %s", run_id, counts)
    if status == SUCCESS:
        purge_route(settings().staging_dir, route.name)
        return {"run_id": run_id, "status": status, **counts}
    unread = f"; range {unpulled[0] + 1} of {unpulled[1]} was not pulled to its end, " \
        "so the next run pulls again from there" if unpulled else ""
    raise RunIncomplete(
        f"run {run_id}: {counts['pending']} of {counts['pulled']} records pending"
        f"{'' if complete else ' (a stage did not finish)'}; they are pulled again by the next run{unread}")


class _RunOutcomes:
    """Every pulled record's outcome, computed from the run's staging and staged, compactly, with
    its cursor and leaf hash: ``record`` goes through them once for the counts, the cursor and the
    leaf hashes, and the settle once more to store them (a large run's outcomes do not fit in
    memory). Computing them reads every stage's part, sealed records with their certificate
    chains included, and hashes every payload: about half the cost of ``record``, which
    :func:`account` takes off it for each partition whose push is done."""

    def __init__(self, route: Route, staging: RunStaging) -> None:
        self.route = route
        self.staging = staging
        self.stages = {name: staging.stage(name) for name in ("extract", "map", "gate", "sign", "push")}
        self.stage = staging.outcomes()

    def compute(self, index: int) -> list[dict[str, Any]]:
        """The outcomes of one part, written to the stage before they are handed out."""
        rows = self.stages["extract"].read_part(index)
        parts = {name: _part_or_nulls(self.stages[name], index, len(rows)) for name in ("map", "gate", "sign", "push")}
        outcomes = []
        for n, row in enumerate(rows):
            outcome = _outcome(self.route, row, parts["map"][n], parts["gate"][n], parts["sign"][n], parts["push"][n])
            outcomes.append({**outcome, "cursor": row["cursor"], "leaf": outcome_leaf(outcome).hex()})
        self.stage.write_part(index, outcomes)
        return outcomes

    def parts(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Every pulled record's outcome, in pull order, a part at a time with its number: as
        :func:`account` staged it for an accounted partition, computed (and staged) now for any
        other, so that what the settle reads again is always what this pass counted."""
        plan = self.staging.plan() or []
        accounted = {index for k, part in enumerate(plan) if self.stage.partition_done(k) for index in part}
        for index in self.stages["extract"].parts():
            yield index, self.stage.read_part(index) if index in accounted else self.compute(index)


def _first_unpulled_range(staging: RunStaging) -> tuple[int, int] | None:
    """The first range not pulled to its end, as (its index, how many ranges the run has), or None.
    Its own pulled records come before anything unread, so they may still move the cursor. A run
    pulled in one pass either pulled everything or ran nothing after extract."""
    ranges = staging.ranges() or []
    extract = staging.stage("extract")
    return next(((k, len(ranges)) for k in range(len(ranges)) if not extract.partition_done(k)), None)


class _StagedOutcomes:
    """The outcomes :class:`_RunOutcomes` staged, re-iterable as the settle needs them; times
    come back as ISO text, which the ledger reads as it reads its own."""

    def __init__(self, stage: StageDir) -> None:
        self.stage = stage

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, outcomes in self.stage.read_all():
            yield from outcomes


def _outcome(route: Route, extracted: dict[str, Any], mapped: dict[str, Any] | None,
             verdict: dict[str, Any] | None, sealed: dict[str, Any] | None,
             ack: dict[str, Any] | None) -> dict[str, Any]:
    payload = (mapped or {}).get("payload")
    key = (payload or {}).get(route.spec.key) or f"#{extracted['id']}"
    out: dict[str, Any] = {
        "record_key": str(key), "source_id": extracted["id"], "source_hash": extracted["source_hash"],
        "payload_hash": content_hash(payload) if payload is not None else None,
        "version": None, "reasons": None, "signature": None, "signer": None,
        "ack_code": None, "ack_status": None, "acked_at": None,
    }
    if verdict is None or verdict["status"] == verdicts.PENDING:
        return {**out, "outcome": PENDING, "reasons": verdict["reasons"] if verdict else None}
    if verdict["status"] == verdicts.QUARANTINE:
        return {**out, "outcome": QUARANTINED, "reasons": verdict["reasons"]}
    if sealed is not None:
        out.update(version=sealed[VERSION], signature=sealed[SIGNATURE],
                   signer=signer_thumbprint(sealed[SIGNATURE]))
    if ack is None:
        return {**out, "outcome": PENDING}
    out.update(ack_code=ack["error_code"], ack_status=ack["status"])
    if ack["acknowledged"]:
        return {**out, "outcome": ACKNOWLEDGED, "acked_at": dt.datetime.fromisoformat(ack["at"])}
    reason = {"field": route.spec.key, "rule": f"portal_rejected_{ack['status']}",
              "message": f"portal refused the record (code {ack['error_code']}): {ack['message']}"}
    return {**out, "outcome": QUARANTINED, "reasons": [reason]}


def _count(counts: dict[str, int], reasons: dict[str, int], outcome: dict[str, Any]) -> None:
    kind = outcome["outcome"]
    if kind == QUARANTINED:
        counts["quarantined"] += 1
        for rule in dict.fromkeys(r["rule"] for r in outcome["reasons"]):
            reasons[rule] = reasons.get(rule, 0) + 1
    elif kind == PENDING:
        counts["pending"] += 1
    else:
        counts["acknowledged"] += 1
    status = outcome["ack_status"]
    if status == "already_acknowledged":
        counts["already_acknowledged"] += 1
    elif status is not None:  # sent to the target in this run
        counts["pushed"] += 1
        counts["duplicates"] += status == "duplicate"
        counts["rejected"] += kind == QUARANTINED


def _resumable(stage: StageDir, index: int, compute: Callable[[int], list[Any]]) -> list[Any]:
    """The part a previous attempt wrote, or else computed and written now: how stages resume."""
    if stage.has_part(index):
        return stage.read_part(index)
    records = compute(index)
    stage.write_part(index, records)
    return records


def _judge_parts(stage: StageDir, parts: list[int], judge: Callable[[int], list[dict[str, Any]]],
                 report: Report, at_once: int = 1) -> dict[str, Any]:
    """A stage that gives each record a status (verify, gate): resumable, counted per status;
    ``at_once`` parts are judged by threads at the same time, each written when it is done."""
    tally: dict[str, int] = {}
    pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix=stage.name)
    try:
        for statuses in pool.map(lambda index: [r["status"] for r in _resumable(stage, index, judge)], parts):
            _tally(tally, statuses)
            report({"records": sum(tally.values()), **tally})
    finally:
        pool.shutdown(cancel_futures=True)  # a part that failed stops the ones not started
    return tally


def _by_partition(staging: RunStaging, stage: StageDir, partition: int | None,
                  work: Callable[[list[int], Report], dict[str, Any]]) -> dict[str, Any]:
    """``work`` over the parts of one partition (a mapped task) or of every partition in turn.

    A partition already marked done is not worked again (a retry, or a whole-stage call after
    some partitions ran); the stage is marked done with the last partition.
    """
    plan = staging.partitions(settings().partitions)
    for k in range(len(plan)) if partition is None else (partition,):
        if stage.partition_done(k):
            continue
        counts = work(plan[k], lambda progress, k=k: stage.report_progress(progress, k))
        counts = {"records": sum(counts.values()), **counts} if "records" not in counts else counts
        log.info("run %s: %s, partition %d of %d: %s", staging.run_id, stage.name, k + 1, len(plan), counts)
        stage.mark_partition_done(k, len(plan), counts)
    return stage.counts() if partition is None else stage.partition_counts(partition)


def _part_or_nulls(stage: Any, index: int, size: int) -> list[Any]:
    return stage.read_part(index) if stage.has_part(index) else [None] * size


def _tally(tally: dict[str, int], statuses: Any) -> None:
    for status in statuses:
        tally[status] = tally.get(status, 0) + 1


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()
