"""The district (SOAP) and commune (REST) sandbox systems as real processes, for the source tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from lienthong.connectors.sources import Source
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
