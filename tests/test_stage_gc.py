"""A stage tunes Python's cyclic collector while it runs (see ``stages._stage``) and gives the
process back as it found it, also when the stage fails: Airflow may run other code after it."""

from __future__ import annotations

import gc
from contextlib import nullcontext

import pytest

from lienthong.routes import stages


def test_a_stage_runs_with_the_collector_tuned_and_restores_it_even_when_it_fails() -> None:
    seen: list[tuple[tuple[int, ...], int]] = []

    @stages._stage
    def work(fail: bool) -> None:
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        if fail:
            raise RuntimeError("the stage failed")

    before = gc.get_threshold()
    assert before != stages.GC_THRESHOLD
    for fail in (False, True):
        with pytest.raises(RuntimeError) if fail else nullcontext():
            work(fail)
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    assert [threshold for threshold, _ in seen] == [stages.GC_THRESHOLD] * 2
    assert all(frozen > 0 for _, frozen in seen)  # what existed when the stage started
