"""The district (SOAP) and commune (REST) sandbox systems as real processes, for the source tests."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml

from lienthong.connectors.sources import Source, open_source
from lienthong.connectors.streams import Cursor, Stream
from lienthong.mappings.engine import MappingEngine
from lienthong.mappings.spec import MappingSpec, load
from lienthong.sandbox import services
from lienthong.settings import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "lienthong" / "registry" / "examples"
COUNT = 600


def example(manifest: str) -> tuple[Stream, MappingSpec]:
    """The first stream of an example manifest, and the mapping it names."""
    declared = yaml.safe_load((EXAMPLES / manifest).read_text(encoding="utf-8"))["streams"][0]
    stream = Stream.model_validate({k: v for k, v in declared.items() if k not in ("target", "mapping", "schedule")})
    return stream, load(EXAMPLES / declared["mapping"])


def running(tmp_path_factory: pytest.TempPathFactory, system: str) -> Iterator[Settings]:
    """One seeded system, served in its own process, with its connection offered as Airflow's."""
    home = tmp_path_factory.mktemp(f"home-{system}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIENTHONG_HOME", str(home))
        mp.delenv("LIENTHONG_STATE_DB", raising=False)
        s = Settings.from_env()
        services.seed_system(s, system, COUNT)
        name = f"dossier_{system}"
        with services.Sandbox(s, {name: 0}).start() as sandbox:
            for conn_id, conn in sandbox.dossier_system_connections().items():
                mp.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
            yield s


def pull(source: Source, after: Cursor | None, size: int) -> list[tuple[Cursor, dict[str, Any]]]:
    return [item for batch in source.read(after, size) for item in batch]


def assert_reads_every_dossier_once_in_order(items: list[tuple[Cursor, dict[str, Any]]], stream: Stream,
                                             answer: dict[str, str | None], code: str) -> None:
    codes = [row[code] for _, row in items]
    assert sorted(codes) == sorted(answer)  # every dossier, none twice
    positions = [(row[stream.cursor_field], row[stream.primary_key]) for _, row in items]
    assert positions == sorted(positions)
    assert [(c.value, c.key) for c, _ in items] == positions  # the position saved is the record's own


def assert_resumes_inside_a_tie(source: Source, stream: Stream) -> None:
    """From a cursor saved (as JSON, as the ledger keeps it) in the middle of many dossiers sharing
    one update time, a read gets exactly the rest, and from the last one nothing."""
    everything = pull(source, None, 100)
    tie = [i for i, (_, r) in enumerate(everything) if r[stream.cursor_field].startswith("2025-06-30T23:00:00")]
    middle = tie[len(tie) // 2]
    saved = Cursor.model_validate(json.loads(json.dumps(everything[middle][0].model_dump())))
    rest = pull(source, saved, 23)
    key = stream.primary_key
    assert [r[key] for _, r in rest] == [r[key] for _, r in everything[middle + 1:]]
    assert pull(source, everything[-1][0], 50) == []


def assert_maps_good_dossiers(items: list[tuple[Cursor, dict[str, Any]]], spec: MappingSpec,
                              answer: dict[str, str | None], code: str) -> None:
    engine = MappingEngine(spec)
    good = [row for _, row in items if answer[row[code]] is None]
    assert len(good) > COUNT * 0.9
    for row in good:
        mapped = engine.map(row)
        assert mapped.errors == [], (row[code], mapped.errors)
        assert mapped.payload["MaHoSo"] == row[code]
        assert len(mapped.payload["TaiLieuNop"]) >= 1


def assert_keeps_the_quota(system: str, stream: Stream, conn_id: str, monkeypatch: pytest.MonkeyPatch,
                           answer: dict[str, str | None], code: str) -> None:
    """Against a system turning away the 11th request in any second, a read of every dossier a page
    of 50 at a time (a dozen requests in well under a second on loopback) runs into the quota
    unpaced, and is only saved by its retries; built from a connection whose ``rate_limit`` is 6,
    the same read has none turned away and takes the time the pace allows. Both read everything."""
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
    faults = f"http://{conn['host']}:{conn['port']}/_sandbox/faults"
    paced_id = f"{conn_id}_{uuid.uuid4().hex[:8]}"  # a timetable of its own in the state database
    tuning = {**conn.get("extra", {}), "max_attempts": 10}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({**conn, "extra": tuning}))
    monkeypatch.setenv(f"AIRFLOW_CONN_{paced_id.upper()}", json.dumps({**conn, "extra": {**tuning, "rate_limit": 6}}))

    def turned_away() -> int:
        return requests.get(faults, timeout=5).json()["injected"].get("quota", 0)

    requests.put(faults, json={"quota_per_s": 10}, timeout=5).raise_for_status()
    try:
        unpaced = pull(open_source(system, stream, conn_id), None, 50)
        assert turned_away() > 0, "unpaced, the read went over the quota"
        time.sleep(1)  # the quota's window empties
        before = turned_away()
        start = time.monotonic()
        paced = pull(open_source(system, stream, paced_id), None, 50)
        elapsed = time.monotonic() - start
        assert turned_away() == before, "paced, none was turned away"
    finally:
        requests.put(faults, json={}, timeout=5).raise_for_status()
    pages = -(-len(answer) // 50)  # the last answers "no more" on its own, or an empty page follows
    assert elapsed >= (pages - 1) / 6
    for items in (unpaced, paced):
        assert sorted(row[code] for _, row in items) == sorted(answer)
