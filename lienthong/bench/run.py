"""One benchmark, start to finish, as one dictionary of figures (what ``--json`` prints)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from lienthong.bench import measure, world

# What the issue asks of the population database's stand-in: slow, as the real one is.
POPULATION_LATENCY_MS = 20.0
# About 3 records/s the naive way (the gate alone costs ~0.25 s a call): 200 take a minute.
NAIVE_SAMPLE = 200


def bench(records: int, sample: int | None = None, home: Path | None = None, partitions: int = 1,
          on_note: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Seed ``records`` dossiers and run the route over them, read them again for the floor, run
    the route through Airflow with nothing new, then seed a sample of fresh ones and push those
    the naive way (fresh, so the portal does the same work for them as for the route's: no answer
    is a duplicate). ``partitions``: see :func:`measure.full_run`."""
    sample = min(records, NAIVE_SAMPLE) if sample is None else sample
    with quiet(), world.private_world(POPULATION_LATENCY_MS, home) as sandbox:
        services = [process.pid for process in sandbox.processes.values()]
        on_note(f"seeding {records:,} dossiers")
        world.seed(records)
        on_note(f"running the route, stage by stage, in {partitions} partition{'s' * (partitions > 1)}")
        full = measure.full_run(world.ROUTE, partitions, services)
        on_note("the floor: ODBC, canonical JSON, SHA-256")
        floor = measure.floor(world.ROUTE)
        on_note("a run with nothing new, through Airflow")
        idle = measure.incremental(world.ROUTE)
        on_note(f"the naive way, on {sample:,} fresh dossiers")
        world.seed(sample, fresh=True)
        naive = measure.naive(world.ROUTE)
        services_peak = measure.processes_peak_rss_mb(services)
    return figures(full, naive, floor, idle, services_peak)


@contextmanager
def quiet() -> Iterator[None]:
    """No INFO lines while measuring: the naive way logs two per record, great-expectations
    hundreds when it loads, and writing them would be timed as the pipeline's work."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def figures(full: measure.Timing, naive: measure.Timing, floor: measure.Timing,
            idle: measure.Timing, services_peak_mb: float) -> dict[str, Any]:
    cpu = {side: sum(used[side] for used in full.cpu_s.values()) for side in ("route", "sandbox")}
    cores = measure.usable_cores()
    return {
        "records": full.records,
        "partitions": full.partitions,
        "wall_s": round(full.seconds, 3),
        "records_per_s": round(full.per_s, 1),
        "stages": {name: round(seconds, 3) for name, seconds in full.stages.items()},
        "stage_records_per_s": {name: round(full.records / seconds, 1) if seconds else None
                                for name, seconds in full.stages.items()},
        # CPU seconds, the route's own and the sandbox's stand-ins', which share the cores.
        "stage_cpu_s": {name: {side: round(seconds, 2) for side, seconds in used.items()}
                        for name, used in full.cpu_s.items()},
        "cpu_s": {side: round(seconds, 2) for side, seconds in cpu.items()},
        "cpu_us_per_record": {side: round(seconds / full.records * 1e6, 1) for side, seconds in cpu.items()},
        # The most records a second the cores could give at that cost, were they never idle: a
        # throughput target above it needs less CPU a record, not more overlap.
        "cores": cores,
        "cpu_bound_records_per_s": round(cores * full.records / sum(cpu.values()), 1),
        # The hub and, while the route ran, its partition processes: they run at the same time.
        "peak_rss_mb": max(round(measure.peak_rss_mb(), 1), *full.peak_rss_mb_after.values()),
        "peak_rss_mb_after_stage": full.peak_rss_mb_after,
        "sandbox_peak_rss_mb": round(services_peak_mb, 1),
        "population_latency_ms": POPULATION_LATENCY_MS,
        "naive": {"records": naive.records, "seconds": round(naive.seconds, 3), "records_per_s": round(naive.per_s, 1)},
        "naive_ratio": round(full.per_s / naive.per_s, 2) if naive.per_s else None,
        "floor": {"records": floor.records, "seconds": round(floor.seconds, 3), "records_per_s": round(floor.per_s, 1)},
        "floor_ratio": round(full.seconds / floor.seconds, 2) if floor.seconds else None,
        "incremental_s": round(idle.seconds, 3),
    }
