"""The distributed deployment's settings and the worker name that tells two workers apart."""

from __future__ import annotations

import socket

import pytest

from lienthong import distributed
from lienthong.airflow_env import environment as embedded_environment
from lienthong.settings import Settings

DEPLOYMENT = distributed.Deployment(
    metadata_db="postgresql+psycopg://airflow@db.tinh.vn/airflow", state_db="postgresql+psycopg://lt@db.tinh.vn/state",
    broker_url="redis://broker.tinh.vn:6379/0", api_url="http://airflow.tinh.vn:8080/", jwt_secret="s3cret")


def test_the_deployment_overrides_only_what_differs_from_the_embedded_run(home: Settings) -> None:
    env = distributed.environment(home, DEPLOYMENT)
    embedded = embedded_environment(home)
    assert {k: v for k, v in env.items() if embedded.get(k) != v} == DEPLOYMENT.settings()
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow.tinh.vn:8080/execution/"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg://airflow@db.tinh.vn/airflow"
    assert env["LIENTHONG_STATE_DB"] == DEPLOYMENT.state_db


def test_airflow_records_the_worker_name_as_the_task_instance_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.utils.net import get_hostname

    monkeypatch.setenv("AIRFLOW__CORE__HOSTNAME_CALLABLE", DEPLOYMENT.settings()["AIRFLOW__CORE__HOSTNAME_CALLABLE"])
    monkeypatch.setenv(distributed.WORKER_NAME_VARIABLE, "worker-a")
    assert get_hostname() == "worker-a"
    monkeypatch.delenv(distributed.WORKER_NAME_VARIABLE)
    assert get_hostname() == socket.getfqdn()


def test_a_deployment_moves_staging_to_object_storage_by_settings_alone(
        home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = distributed.Deployment(**{**DEPLOYMENT.__dict__, "staging_url": "s3://tinh-lgsp/staging",
                                           "staging_conn_id": "lienthong_staging"})
    for key, value in distributed.environment(home, deployment).items():
        monkeypatch.setenv(key, value)
    staging = Settings.from_env().staging_dir
    assert (staging.protocol, staging.bucket, staging.key, staging.conn_id) == (
        "s3", "tinh-lgsp", "staging", "lienthong_staging")
    assert "LIENTHONG_STAGING_URL" not in DEPLOYMENT.settings()  # unset: the shared home's folder
