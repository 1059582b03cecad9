"""The staging area between stages: records travel through files, tasks hand over references.

Layout: ``<staging>/<run_id>/<stage>/part-00000.jsonl``. A stage writes, per input part, only what
it adds (verification results, payloads, gate verdicts, sealed records, acks), in the same order as
its input, so a later stage reads the parts it needs side by side. Each part appears by an atomic
rename, so a part file is either complete or absent: a retried task skips the parts it has and
resumes at the first one missing. ``_done.json`` marks a finished stage with its counts.

After extract, a run's parts are split once into contiguous partitions (``_partitions.json``);
the later stages can run one task per partition (Airflow's dynamic task mapping, spread over
Celery workers), each marking its partition done (``_done.p00000.json``). Whichever partition
finishes last sees them all and marks the whole stage.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
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

    def partition_done(self, partition: int) -> bool:
        return (self.path / f"_done.p{partition:05d}.json").exists()

    def partition_counts(self, partition: int) -> dict[str, Any]:
        return orjson.loads((self.path / f"_done.p{partition:05d}.json").read_bytes())

    def mark_partition_done(self, partition: int, of: int, counts: dict[str, Any]) -> None:
        """The partition's counts; the stage's, summed, once all ``of`` partitions are done.

        Two partitions finishing together may both write the stage's mark: the same bytes.
        """
        self._write_json(f"_done.p{partition:05d}.json", counts)
        if all(self.partition_done(k) for k in range(of)):
            self.mark_done(sum_counts(self.partition_counts(k) for k in range(of)))

    def report_progress(self, counts: dict[str, Any], partition: int = 0) -> None:
        """Read by whoever shows progress (the demo); written after every part, per partition."""
        self._write_json(f"_progress.p{partition:05d}.json", counts)

    def progress(self) -> dict[str, Any] | None:
        if self.done:
            return self.counts()
        found = []
        for path in self.path.glob("_progress.p*.json"):
            try:
                found.append(orjson.loads(path.read_bytes()))
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue
        return sum_counts(found) if found else None

    def _write_json(self, name: str, value: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(self.path / name, value)


class RunStaging:
    """All stages of one run; the run id is the only thing tasks need to pass each other."""

    def __init__(self, staging_dir: Path, run_id: str) -> None:
        self.run_id = run_id
        self.root = staging_dir / run_id

    def last_written(self) -> float | None:
        """When any stage of the run last wrote a file (epoch seconds): the run's heartbeat."""
        times = [p.stat().st_mtime for p in self.root.rglob("*") if p.is_file()] if self.root.exists() else []
        return max(times, default=None)

    def partitions(self, wanted: int = 1) -> list[list[int]]:
        """Extract's parts in at most ``wanted`` contiguous partitions, planned once per run, so
        every task and retry of the run (even under a changed setting) sees the same partitions.
        There is always at least one, empty when nothing was pulled."""
        path = self.root / "_partitions.json"
        if path.exists():
            return orjson.loads(path.read_bytes())
        parts = self.stage("extract").parts()
        size = max(1, math.ceil(len(parts) / max(1, wanted)))
        plan = [parts[start : start + size] for start in range(0, len(parts), size)] or [[]]
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(path, plan)
        return plan

    def stage(self, name: str) -> StageDir:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}")
        return StageDir(self.root, name)


def _write_json_atomically(path: Path, value: Any) -> None:
    """By a rename, from a temporary file of a random name: partitions, on other machines too,
    may write the same mark at once, and two of them can share a process id."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(orjson.dumps(value))
    os.replace(tmp, path)


def sum_counts(counts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts of several partitions as one: every count added up, key by key, in order met."""
    total: dict[str, Any] = {}
    for one in counts:
        for key, value in one.items():
            total[key] = total.get(key, 0) + value
    return total


def purge_route(staging_dir: Path, route: str) -> None:
    """Every run's staging of ``route``, personal data included: called when a run succeeded.

    A failed run keeps its staging so that Airflow can retry it; once a later run has pulled its
    pending records again and settled them all, none of it is needed any more.
    """
    for root in staging_dir.glob(f"{route}__*"):
        shutil.rmtree(root, ignore_errors=True)
