"""``lienthong bench`` end to end on a small N: the real sandbox, the real route (in two partition
processes, the way with more moving parts), one JSON object; and the cores its CPU bound counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from numbers import Real

import pytest
from rich.console import Console

from lienthong.bench.measure import usable_cores
from lienthong.bench.report import show

@pytest.mark.slow  # the run with nothing new goes through Airflow
def test_bench_reports_every_figure_as_one_json_object(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lienthong.cli", "bench", "--records", "1200", "--sample", "3",
                           "--partitions", "2", "--json", "--home", str(tmp_path / "home")],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # the only thing on stdout
    assert result["records"] == 1200 and result["floor"]["records"] == 1200 and result["naive"]["records"] == 3
    assert result["partitions"] == 2  # three parts of 500
    assert set(result["stages"]) == {"pull", "verify", "map", "gate", "sign", "push", "account", "record"}
    assert abs(sum(result["stages"].values()) - result["wall_s"]) < 0.01
    for key in ("wall_s", "records_per_s", "peak_rss_mb", "naive_ratio", "floor_ratio", "incremental_s"):
        assert isinstance(result[key], Real) and result[key] > 0, key
    assert all(seconds > 0 for seconds in result["stages"].values())
    # CPU per stage, the route's (hub and partition processes) apart from the sandbox's stand-ins
    assert set(result["stage_cpu_s"]) == set(result["stages"])
    assert all(used["route"] > 0 and used["sandbox"] >= 0 for used in result["stage_cpu_s"].values())
    assert result["stage_cpu_s"]["verify"]["sandbox"] > 0  # the population stand-in answered
    assert result["stage_cpu_s"]["push"]["sandbox"] > 0  # the portal stand-in checked signatures
    for side in ("route", "sandbox"):
        assert result["cpu_s"][side] == pytest.approx(sum(used[side] for used in result["stage_cpu_s"].values()),
                                                      abs=0.1)
    for side in ("route", "sandbox"):
        assert result["cpu_us_per_record"][side] == pytest.approx(result["cpu_s"][side] / 1200 * 1e6, abs=10)
    # No run goes faster than its CPU allows on the cores it has (with the figures' rounding).
    assert result["records_per_s"] <= result["cpu_bound_records_per_s"] * 1.01
    console = Console(record=True, width=200)  # the tables a person gets without --json
    show(result, console)
    text = console.export_text()
    assert all(name in text for name in result["stages"]) and "CPU s, sandbox" in text
    assert f"the sandbox's stand-ins {result['cpu_s']['sandbox']:,.1f} s" in text
    assert f"at most {result['cpu_bound_records_per_s']:,.0f} records/s" in text


@pytest.mark.parametrize(("cpu_max", "cores"), [
    ("max 100000\n", 2.0), ("50000 100000\n", 0.5), ("400000 100000\n", 2.0), (None, 2.0)])
def test_the_cpu_bound_counts_the_cores_the_quota_and_the_affinity_allow(
        tmp_path, monkeypatch, cpu_max, cores):
    """A container given half a core of a 2-core machine can never go past half a core's bound;
    a quota above the cores this process may run on does not add any."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    limit = tmp_path / "cpu.max"
    if cpu_max is not None:
        limit.write_text(cpu_max)
    assert usable_cores(limit) == cores
