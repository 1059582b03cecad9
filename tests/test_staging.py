"""The staging area's guarantees, on a local folder and on an S3 bucket (moto's server over HTTP):
a part is complete or absent, marks add up across partitions, the heartbeat moves with every
write, and purging a route leaves no personal data behind and nothing of other routes lost."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from lienthong import staging
from lienthong.settings import Settings
from lienthong.staging import RunStaging, latest_run, purge_route


def _records(count: int, fail_at: int | None = None) -> Iterator[dict[str, Any]]:
    for i in range(count):
        if i == fail_at:
            raise ConnectionError("the source went away")
        yield {"id": str(i), "row": {"full_name": "Nguyễn Văn A", "n": i}}


def test_parts_are_complete_or_absent_and_read_back_in_order(staged_home: Settings) -> None:
    stage = RunStaging(staged_home.staging_dir, "r__1").stage("extract")
    assert stage.parts() == [] and not stage.has_part(0)
    assert stage.write_part(0, _records(300)) == 300
    with pytest.raises(ConnectionError):
        stage.write_part(1, _records(300, fail_at=200))
    assert stage.parts() == [0] and not stage.has_part(1)  # the half-written part left nothing
    stage.write_part(2, _records(3))
    assert stage.parts() == [0, 2] and stage.has_part(2)
    assert stage.read_part(0) == list(_records(300))
    assert [(i, len(rows)) for i, rows in stage.read_all()] == [(0, 300), (2, 3)]


def test_a_run_cut_into_ranges_is_planned_once_and_its_partitions_are_the_parts_each_range_pulled(
        staged_home: Settings) -> None:
    """Range k numbers its parts from k * RANGE_PARTS: read in pull order by number, not by name
    (``part-1000000`` sorts before ``part-99999`` as text)."""
    run = RunStaging(staged_home.staging_dir, "r__ranges")
    assert run.ranges() is None and run.plan() is None
    cut = [{"after": None, "until": {"value": 5, "kind": "int", "key": "5"}},
           {"after": {"value": 5, "kind": "int", "key": "5"}, "until": None}]
    assert run.plan_ranges(cut) == cut
    assert run.plan_ranges(list(reversed(cut))) == cut == run.ranges()  # a retried extract finds the first cut
    assert run.partitions(5) == [[], []]  # one partition a range, whatever is asked, nothing pulled yet
    extract = run.stage("extract")
    for index in (staging.RANGE_PARTS, 99_999, 0, staging.RANGE_PARTS + 1):
        extract.write_part(index, _records(1))
    assert extract.parts() == [0, 99_999, staging.RANGE_PARTS, staging.RANGE_PARTS + 1]
    assert run.plan() == run.partitions() == [[0, 99_999], [staging.RANGE_PARTS, staging.RANGE_PARTS + 1]]


def test_a_part_reads_back_exactly_as_written_whatever_its_values_hold(staged_home: Settings) -> None:
    """A part is read as one JSON array made of its lines: a value holding newlines, commas or
    brackets must not split or join records, and an empty part is an empty list."""
    stage = RunStaging(staged_home.staging_dir, "r__1").stage("map")
    awkward = [{"note": "dòng 1\ndòng 2\r\n,]}[{", "list": [], "none": None},
               {"path": ["a\n", "b"], "empty": "", "nested": {"x": "\n"}},
               {}]
    stage.write_part(0, awkward)
    stage.write_part(1, [])
    assert stage.read_part(0) == awkward
    assert stage.read_part(1) == []


def test_partition_marks_add_up_to_the_stage_mark_once_all_are_done(staged_home: Settings) -> None:
    staging = RunStaging(staged_home.staging_dir, "r__1")
    extract = staging.stage("extract")
    for i in range(5):
        extract.write_part(i, _records(2))
    assert staging.partitions(2) == [[0, 1, 2], [3, 4]]
    assert staging.partitions(5) == [[0, 1, 2], [3, 4]]  # planned once
    verify = staging.stage("verify")
    verify.report_progress({"records": 4}, partition=1)
    verify.report_progress({"records": 1}, partition=0)
    assert verify.progress() == {"records": 5}
    verify.mark_partition_done(1, 2, {"records": 4})
    assert verify.partition_done(1) and not verify.done
    verify.mark_partition_done(0, 2, {"records": 6, "failed": 1})
    assert verify.done and verify.counts() == {"records": 10, "failed": 1}
    assert verify.progress() == verify.counts()


def test_progress_is_written_at_most_once_an_interval_and_a_done_partition_counts_its_mark(
        staged_home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress is reported after every part but written at most every PROGRESS_EVERY_S per
    partition (a request each in a bucket); what is shown stays right once a partition is done."""
    verify = RunStaging(staged_home.staging_dir, "r__1").stage("verify")
    monkeypatch.setattr(staging, "PROGRESS_EVERY_S", 3600.0)
    verify.report_progress({"records": 500}, partition=0)
    verify.report_progress({"records": 1000}, partition=0)  # within the interval: not written
    assert verify.progress() == {"records": 500}
    verify.report_progress({"records": 7}, partition=1)  # each partition has its own interval
    assert verify.progress() == {"records": 507}
    verify.mark_partition_done(0, 2, {"records": 1500})
    assert verify.progress() == {"records": 1507}  # the done partition's mark, not its last progress
    monkeypatch.setattr(staging, "PROGRESS_EVERY_S", 0.0)
    verify.report_progress({"records": 9}, partition=1)
    assert verify.progress() == {"records": 1509}


def test_the_heartbeat_moves_with_writes_and_purge_takes_only_the_route(staged_home: Settings) -> None:
    root = staged_home.staging_dir
    mine, other = RunStaging(root, "route_a__1"), RunStaging(root, "route_b__1")
    assert mine.last_written() is None and latest_run(root, "route_a", 0) is None
    before = time.time()
    mine.stage("extract").write_part(0, _records(2))
    other.stage("extract").write_part(0, _records(2))
    written = mine.last_written()
    assert written is not None and written >= int(before) - 1  # S3 keeps whole seconds
    assert latest_run(root, "route_a", before).run_id == "route_a__1"
    assert latest_run(root, "route_a", time.time() + 60) is None

    purge_route(root, "route_a")
    assert mine.last_written() is None and not mine.root.exists() and mine.stage("extract").parts() == []
    assert other.stage("extract").read_part(0) == list(_records(2))
