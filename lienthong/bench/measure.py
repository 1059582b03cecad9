"""The three measurements: the route as it runs, the naive way on a sample, and the floor.

Each returns seconds and a record count; :func:`lienthong.bench.run.bench` puts them together.
The naive way and the floor use the very libraries and connectors the route uses, so a ratio
says what the route's batching and concurrency buy, not what a faster library would.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from lienthong.routes import stages

# The route's stages in the order a DAG runs them, under the names the figures use.
STAGES: tuple[tuple[str, Callable[[str, str], dict[str, Any]]], ...] = (
    ("pull", stages.pull), ("verify", stages.verify), ("map", stages.map_records),
    ("gate", stages.gate_records), ("sign", stages.sign), ("push", stages.push), ("account", stages.account),
    ("record", stages.record),
)
# The stages a DAG maps over the run's partitions (extract, timed with pull, plans them and may
# pull the run itself; record settles them all).
PARTITIONED = ("pull", "verify", "map", "gate", "sign", "push", "account")


@dataclass
class Timing:
    records: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    # The process's peak memory once each stage is over: the stage where it jumps holds the memory.
    peak_rss_mb_after: dict[str, float] = field(default_factory=dict)
    partitions: int = 1  # the run's, as extract planned them
    # CPU seconds each stage took, by side: "route" (the hub and the partition processes) and
    # "sandbox" (the stand-ins and their workers), which share the machine's cores.
    cpu_s: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def full_run(route_name: str, partitions: int = 1, sandbox_pids: Iterable[int] = ()) -> Timing:
    """One run of the route, stage after stage as its DAG would, timing each; it must settle
    every record (a run with pending records would measure less work than it claims).

    With ``partitions`` > 1 the mapped stages run each partition in a process of its own at the
    same time, as a deployment with that many worker slots runs the DAG's mapped task instances;
    the peak memory is then the hub's plus every partition process's. Each stage's CPU time is
    counted for the route and for the processes ``sandbox_pids`` (and their children): on a
    machine the stand-ins share, a stage's wall time says little about the route's own cost.
    """
    run_id = stages.run_id_for(route_name, f"bench-{time.time_ns()}")
    sandbox_pids = list(sandbox_pids)
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    results: dict[str, dict[str, Any]] = {}
    workers: dict[int, tuple[float, float]] = {}  # partition process -> (its peak memory, its CPU) so far

    def route_cpu_s() -> float:
        return own_cpu_s() + sum(used for _, used in workers.values())

    with _partition_workers(partitions) as pool:
        for name, stage in STAGES:
            route_cpu, sandbox_cpu = route_cpu_s(), processes_cpu_s(sandbox_pids)
            start = time.perf_counter()
            if name == "pull":  # the extract task: the run opened, pulled in one pass or cut into ranges
                stages.extract(route_name, run_id)
                planned = stages.partitions(run_id)
            if pool is not None and name in PARTITIONED:
                jobs = [(name, route_name, run_id, k) for k in range(planned)]
                workers.update((pid, (peak, used)) for pid, peak, used in pool.map(_run_partition, jobs))
            else:
                results[name] = stage(route_name, run_id)
            timings[name] = time.perf_counter() - start
            cpu[name] = {"route": route_cpu_s() - route_cpu, "sandbox": processes_cpu_s(sandbox_pids) - sandbox_cpu}
            peaks[name] = round(peak_rss_mb() + sum(peak for peak, _ in workers.values()), 1)
    return Timing(results["record"]["pulled"], sum(timings.values()), timings, peaks, planned, cpu)


@contextmanager
def _partition_workers(partitions: int) -> Iterator[ProcessPoolExecutor | None]:
    """Processes for the partitions, started once for the whole run (each pays its imports once,
    as a worker does); the route's partition count is set for extract to plan with."""
    if partitions <= 1:
        yield None
        return
    saved = os.environ.get("LIENTHONG_PARTITIONS")
    os.environ["LIENTHONG_PARTITIONS"] = str(partitions)
    pool = ProcessPoolExecutor(partitions, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown()
        if saved is None:
            os.environ.pop("LIENTHONG_PARTITIONS")
        else:
            os.environ["LIENTHONG_PARTITIONS"] = saved


def _run_partition(job: tuple[str, str, str, int]) -> tuple[int, float, float]:
    """One partition of one stage, in a partition process: which process, its peak memory and its
    CPU seconds so far."""
    name, route_name, run_id, partition = job
    dict(STAGES)[name](route_name, run_id, partition)
    return os.getpid(), peak_rss_mb(), own_cpu_s()


def floor(route_name: str) -> Timing:
    """The least any run must do: read the rows through ODBC, encode them canonically, hash them."""
    from lienthong.connectors.odbc import OdbcSource
    from lienthong.routes.route import get_route
    from lienthong.signing.canonical import canonical_json

    route = get_route(route_name)
    start = time.perf_counter()
    count = 0
    for batch in OdbcSource.from_connection(route.stream, route.source_conn).read(None):
        for _, row in batch:
            hashlib.sha256(canonical_json(row)).digest()
        count += len(batch)
    return Timing(count, time.perf_counter() - start)


def incremental(route_name: str) -> Timing:
    """A scheduled run with nothing new, through Airflow as a 5-minute sync runs (the DAG folder
    parsed, one DAG run, every task), timed from the call to the settled run. Airflow's metadata
    database is made first: a deployment has it already."""
    from lienthong import airflow_env
    from lienthong.demo import run_routes
    from lienthong.settings import settings

    s = settings()
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    airflow_env.ensure_metadata_db(s, airflow_env.environment(s), s.logs_dir / "bench-airflow-db.log")
    start = time.perf_counter()
    (run,) = run_routes(s, [route_name])
    seconds = time.perf_counter() - start
    if run["status"] != "success" or run["counts"]["pulled"]:
        raise RuntimeError(f"the run with nothing new pulled {run['counts']['pulled']} records and ended "
                           f"{run['status']}: see {run['log_file']}")
    return Timing(0, seconds)


def naive(route_name: str) -> Timing:
    """The same work record by record, as a first integration would do it: rows read after the
    route's cursor (so fresh ones, none the portal holds yet), then for each one a SOAP call for
    its citizen, the mapping, the gate on a batch of one, a JWS and its own HTTP POST."""
    from lienthong.audit.ledger import Ledger
    from lienthong.connectors.rest import PortalSink
    from lienthong.connectors.soap import PopulationVerifier, Subject
    from lienthong.connectors.sources import open_source
    from lienthong.gates import gate
    from lienthong.mappings.engine import MappingEngine
    from lienthong.routes.route import get_route
    from lienthong.settings import settings
    from lienthong.signing.keys import load_signer
    from lienthong.signing.records import seal

    route = get_route(route_name)
    s = settings()
    after = Ledger(s.state_db_url).cursor(route.name)
    engine = MappingEngine(route.spec)
    verifier = PopulationVerifier.from_connection(route.population_conn)
    signer = load_signer(s.keys_dir, route.signing_key)
    gate.suite_gate(route.suite_file)  # loaded by the full run already; never part of the timing
    source = open_source(route.protocol, route.stream, route.source_conn)
    count = 0
    start = time.perf_counter()
    with PortalSink.from_connection(route.portal_conn) as sink:
        for batch in source.read(after):
            for _, row in batch:
                answer = verifier.verify([Subject(**(engine.subject(row) or {}))])[0]
                record = stages._mapped(engine, row, {"status": answer.status, "fields": list(answer.fields)})
                (verdict,) = gate.evaluate([record], route.suite_file)
                if verdict.status == gate.PASS:
                    sink.push([seal(record["payload"], signer)], service=route.target.service)
                count += 1
    return Timing(count, time.perf_counter() - start)


def peak_rss_mb() -> float:
    """This process's peak resident memory: the hub's own, which is what has to stay flat as N grows."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def processes_peak_rss_mb(pids: Iterable[int]) -> float:
    """The largest peak resident memory among running processes (the sandbox's services), from
    Linux's ``VmHWM``: the children's rusage would also count the seeding child."""
    peaks = []
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        peaks.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))))
    return max(peaks, default=0) / 1024


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float:
    """The cores this process may keep busy: those it may run on, and no more than its cgroup's
    CPU quota (a container's limit, ``cpu.max`` in cgroup v2), both of which ``os.cpu_count()``
    ignores; a bound on the wrong count would read too high."""
    cores = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):  # no cgroup v2 here
        return cores
    return cores if quota == "max" else min(cores, int(quota) / int(period))


def own_cpu_s() -> float:
    """This process's CPU seconds so far, every thread's, user and system."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def processes_cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds so far of running processes and all their children (the portal's judges), with
    what their ended children used."""
    import psutil

    total = 0.0
    for pid in pids:
        root = psutil.Process(pid)
        for process in (root, *root.children(recursive=True)):
            with suppress(psutil.NoSuchProcess):
                used = process.cpu_times()
                total += used.user + used.system + used.children_user + used.children_system
    return total
