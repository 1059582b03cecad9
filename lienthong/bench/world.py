"""A private world for one benchmark: a fresh data folder, keys, the sandbox, the example connector.

A benchmark must never read or move the cursor of the operator's own data folder, and its
figures must not depend on what an earlier run left behind, so it always starts from nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lienthong.connectors.odbc import connection_string_for
from lienthong.demo import EXAMPLES_DIR
from lienthong.registry.store import Registry
from lienthong.sandbox import services
from lienthong.sandbox.services import Sandbox
from lienthong.settings import Settings, settings
from lienthong.signing.keys import init_keys

ROUTE = "stp_h40__dossiers"
MANIFEST = "so-tu-phap.yaml"
ACTOR = "bench"


@contextmanager
def private_world(population_latency_ms: float, home: Path | None = None) -> Iterator[Sandbox]:
    """Point this process at a fresh data folder (removed afterwards unless ``home`` was given),
    start the sandbox with the population database's latency, offer its connections and approve
    the example connector whose dossier route is measured."""
    folder = home or Path(tempfile.mkdtemp(prefix="lienthong-bench-"))
    saved = dict(os.environ)
    os.environ["LIENTHONG_HOME"] = str(folder)
    os.environ.pop("LIENTHONG_STATE_DB", None)
    try:
        s = settings()
        init_keys(s.keys_dir)
        with services.start(s, latency_ms={"population": population_latency_ms}) as sandbox:
            for conn_id, conn in sandbox.connections().items():  # ours, whatever the shell had
                os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
            approve(s)
            yield sandbox
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if home is None:
            shutil.rmtree(folder, ignore_errors=True)


def approve(s: Settings) -> None:
    registry = Registry(s.state_db_url)
    registry.approve(registry.register(EXAMPLES_DIR / MANIFEST, ACTOR)[0], ACTOR)


def seed(count: int, fresh: bool = False) -> None:
    """``fresh``: updated now, after every dossier seeded before (those are spread over past years),
    so that a read after the route's cursor gets exactly these.

    In a child process: the seed is generated whole in memory, and the benchmark's peak memory
    must be the route's, not the seeding's (at 100,000 dossiers it added ~200 MB).
    """
    child = multiprocessing.get_context("spawn").Process(target=_seed, args=(count, fresh), name="seed")
    child.start()
    child.join()
    if child.exitcode:
        raise RuntimeError(f"seeding {count} dossiers failed (exit code {child.exitcode})")


def _seed(count: int, fresh: bool) -> None:
    updated_at = dt.datetime.now().replace(microsecond=0) if fresh else None
    services.seed_dossiers(settings(), connection_string_for(), count, updated_at)
