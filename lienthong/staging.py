"""The staging area between stages: records travel through files, tasks hand over references.

Layout: ``<staging>/<run_id>/<stage>/part-00000.jsonl``. A stage writes, per input part, only what
it adds (verification results, payloads, gate verdicts, sealed records, acks), in the same order as
its input, so a later stage reads the parts it needs side by side. Each part appears by an atomic
rename, so a part file is either complete or absent: a retried task skips the parts it has and
resumes at the first one missing. ``_done.json`` marks a finished stage with its counts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

STAGES = ("extract", "verify", "map", "gate", "sign", "push")


class StageDir:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.path = root / name

    def part_path(self, index: int) -> Path:
        return self.path / f"part-{index:05d}.jsonl"

    def has_part(self, index: int) -> bool:
        return self.part_path(index).exists()

    def parts(self) -> list[int]:
        if not self.path.exists():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in self.path.glob("part-*.jsonl"))

    def write_part(self, index: int, records: Iterable[dict[str, Any]]) -> int:
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.part_path(index)
        tmp = final.with_suffix(".tmp")
        count = 0
        with open(tmp, "wb") as handle:
            for record in records:
                handle.write(orjson.dumps(record))
                handle.write(b"\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        return count

    def read_part(self, index: int) -> list[dict[str, Any]]:
        with open(self.part_path(index), "rb") as handle:
            return [orjson.loads(line) for line in handle]

    def read_all(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        for index in self.parts():
            yield index, self.read_part(index)

    @property
    def done(self) -> bool:
        return (self.path / "_done.json").exists()

    def mark_done(self, counts: dict[str, Any]) -> None:
        self._write_json("_done.json", counts)

    def counts(self) -> dict[str, Any]:
        return orjson.loads((self.path / "_done.json").read_bytes())

    def report_progress(self, counts: dict[str, Any]) -> None:
        """Read by whoever shows progress (the demo); written after every part."""
        self._write_json("_progress.json", counts)

    def progress(self) -> dict[str, Any] | None:
        for name in ("_done.json", "_progress.json"):
            try:
                return orjson.loads((self.path / name).read_bytes())
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue
        return None

    def _write_json(self, name: str, value: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f"{name}.tmp"
        tmp.write_bytes(orjson.dumps(value))
        os.replace(tmp, self.path / name)


class RunStaging:
    """All stages of one run; the run id is the only thing tasks need to pass each other."""

    def __init__(self, staging_dir: Path, run_id: str) -> None:
        self.run_id = run_id
        self.root = staging_dir / run_id

    def last_written(self) -> float | None:
        """When any stage of the run last wrote a file (epoch seconds): the run's heartbeat."""
        times = [p.stat().st_mtime for p in self.root.rglob("*") if p.is_file()] if self.root.exists() else []
        return max(times, default=None)

    def stage(self, name: str) -> StageDir:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}")
        return StageDir(self.root, name)


def purge_route(staging_dir: Path, route: str) -> None:
    """Every run's staging of ``route``, personal data included: called when a run succeeded.

    A failed run keeps its staging so that Airflow can retry it; once a later run has pulled its
    pending records again and settled them all, none of it is needed any more.
    """
    for root in staging_dir.glob(f"{route}__*"):
        shutil.rmtree(root, ignore_errors=True)
