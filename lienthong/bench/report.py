"""The benchmark's figures as tables for a person (``--json`` gives them to a program)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def show(result: dict[str, Any], console: Console) -> None:
    stages = Table(title=f"{result['records']:,} dossiers end to end in {result['wall_s']:.1f} s: "
                         f"{result['records_per_s']:,.0f} records/s, {result['partitions']} partition(s) at once")
    for column in ("stage", "seconds", "share", "records/s", "CPU s, route", "CPU s, sandbox"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for name, seconds in result["stages"].items():
        rate, cpu = result["stage_records_per_s"][name], result["stage_cpu_s"][name]
        stages.add_row(name, f"{seconds:.2f}", f"{seconds / result['wall_s']:.0%}", f"{rate:,.0f}" if rate else "-",
                       f"{cpu['route']:.1f}", f"{cpu['sandbox']:.1f}")
    console.print(stages)
    cpu, each = result["cpu_s"], result["cpu_us_per_record"]
    console.print(f"CPU: the route {cpu['route']:,.1f} s, the sandbox's stand-ins {cpu['sandbox']:,.1f} s, on "
                  f"{result['cores']:g} cores for {result['wall_s']:.1f} s; a record costs the route "
                  f"{each['route']:,.0f} µs and the stand-ins {each['sandbox']:,.0f} µs, so the cores allow at most "
                  f"{result['cpu_bound_records_per_s']:,.0f} records/s")
    yardsticks = Table(title="against the yardsticks")
    for column in ("way", "records", "seconds", "records/s", "ratio"):
        yardsticks.add_column(column, justify="left" if column == "way" else "right")
    for way, key, ratio in (("naive (record by record)", "naive", f"route {result['naive_ratio']}x faster"),
                            ("floor (ODBC + canonical JSON + SHA-256)", "floor",
                             f"route {result['floor_ratio']}x slower")):
        r = result[key]
        yardsticks.add_row(way, f"{r['records']:,}", f"{r['seconds']:.2f}", f"{r['records_per_s']:,.0f}", ratio)
    console.print(yardsticks)
    console.print(f"a run with nothing new, through Airflow: {result['incremental_s']:.1f} s")
    console.print(f"peak memory: the route {result['peak_rss_mb']:,.0f} MB (hub and partition processes), "
                  f"largest sandbox service "
                  f"{result['sandbox_peak_rss_mb']:,.0f} MB; population database latency "
                  f"{result['population_latency_ms']:.0f} ms per call")
