"""A run's own partition count (``{"partitions": N}`` in its DAG run conf): planned with it on the
real staging (a local folder and an S3 bucket), kept by a retry, and bad values refused, by the
stages' check and, alike, by the schema of the DAG param Airflow validates a run's conf against."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from airflow.sdk.definitions.param import process_params
from airflow.sdk.exceptions import ParamValidationError

from lienthong.registry.store import Registry
from lienthong.routes import stages
from lienthong.routes.dag_factory import build_dag
from lienthong.settings import MAX_PARTITIONS, Settings, settings
from lienthong.signing.keys import init_keys
from lienthong.staging import RunStaging
from tests.e2e import approve_examples

BAD_VALUES = (0, -2, MAX_PARTITIONS + 1, "8", 3.0, True, [2], {"n": 2})


def _extracted(s: Settings, run_id: str, parts: int) -> RunStaging:
    """A run whose extract staged ``parts`` parts of two records each."""
    staging = RunStaging(s.staging_dir, run_id)
    for index in range(parts):
        staging.stage("extract").write_part(index, ({"id": f"{index}-{n}"} for n in range(2)))
    return staging


def test_a_run_is_planned_with_its_own_count_and_a_retry_keeps_the_first_plan(
        staged_home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIENTHONG_PARTITIONS", "2")
    staging = _extracted(staged_home, "r__asked", 6)
    assert stages.partitions("r__asked", stages.requested_partitions({"partitions": 3})) == 3
    assert staging.partitions() == [[0, 1], [2, 3], [4, 5]]
    # A retried extract asks again, a worker with another setting asks nothing: the plan stands.
    assert stages.partitions("r__asked", 5) == 3
    monkeypatch.setenv("LIENTHONG_PARTITIONS", "1")
    assert stages.partitions("r__asked") == 3


def test_a_run_that_asks_nothing_is_planned_with_the_setting(staged_home: Settings,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIENTHONG_PARTITIONS", "2")
    _extracted(staged_home, "r__setting", 6)
    assert stages.requested_partitions({}) is None and stages.requested_partitions({"partitions": None}) is None
    assert stages.partitions("r__setting", None) == 2


def test_more_partitions_asked_than_parts_pulled_gives_one_part_each(staged_home: Settings) -> None:
    """A small run asked for many partitions is not split into empty ones."""
    _extracted(staged_home, "r__small", 3)
    assert stages.partitions("r__small", stages.requested_partitions({"partitions": MAX_PARTITIONS})) == 3


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_a_bad_count_is_refused_naming_the_conf_key_and_the_value(value: Any) -> None:
    with pytest.raises(ValueError) as refused:
        stages.requested_partitions({"partitions": value})
    assert f"DAG run conf 'partitions' is {value!r}" in str(refused.value)
    assert f"from 1 to {MAX_PARTITIONS}" in str(refused.value)


@pytest.mark.parametrize("value", ("0", "-2", str(MAX_PARTITIONS + 1), "two", "2.5", "1e3", "2²", "١٢"))
def test_a_bad_partitions_setting_is_refused_naming_the_variable_and_the_value(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIENTHONG_PARTITIONS", value)
    with pytest.raises(ValueError, match=re.escape(f"LIENTHONG_PARTITIONS is {value!r}: it must be a whole number "
                                                   f"from 1 to {MAX_PARTITIONS}")):
        settings()
    monkeypatch.setenv("LIENTHONG_PARTITIONS", f" {MAX_PARTITIONS} ")
    assert settings().partitions == MAX_PARTITIONS


def test_the_dag_param_shows_the_count_and_airflow_refuses_what_the_stages_refuse(
        home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    init_keys(home.keys_dir)  # registering looks the signing key and the source connection up
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DOSSIER_DB", json.dumps({"conn_type": "generic", "host": "x"}))
    approve_examples(home, "so-tu-phap.yaml")
    [route, *_] = Registry(home.state_db_url).approved_routes()
    dag = build_dag(route)
    param = dag.params.get_param("partitions")
    assert "LIENTHONG_PARTITIONS" in param.description

    def at_task_start(conf: dict[str, Any] | None) -> Any:
        """What the extract task's params are once Airflow's task runner merged the run's conf in."""
        return process_params(dag, dag.get_task("extract"), conf, suppress_exception=False)["partitions"]

    assert at_task_start(None) is None  # a run with no conf: the setting decides
    for good in (1, 8, MAX_PARTITIONS):
        assert at_task_start({"partitions": good}) == good
    for bad in BAD_VALUES:
        if isinstance(bad, float):  # JSON Schema counts 3.0 as an integer; the stages' check refuses it
            continue
        with pytest.raises(ParamValidationError, match=re.escape(f"param partitions: {bad!r}")):
            at_task_start({"partitions": bad})
