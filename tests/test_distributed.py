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
