"""What a distributed deployment sets on top of the embedded one: settings only, no other code path.

The embedded run (``lienthong.airflow_env``) and a deployment of an API server, a scheduler, a
DAG processor and Celery workers on several machines run the same DAGs and the same stages; they
differ in where Airflow's metadata, the ledger and the broker live. Every process of a deployment
gets the same settings, so they are made in one place from the few facts a province knows.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from lienthong.airflow_env import environment as embedded_environment
from lienthong.settings import Settings

WORKER_NAME_VARIABLE = "LIENTHONG_WORKER_NAME"


@dataclass(frozen=True)
class Deployment:
    """The shared facts of one deployment. ``metadata_db`` and ``state_db`` are SQLAlchemy URLs
    (PostgreSQL: SQLite cannot be shared between machines), ``broker_url`` a Celery broker
    (``redis://`` or ``amqp://``), ``api_url`` the API server every worker reaches for the
    Execution API, ``jwt_secret`` the key all processes sign and check task tokens with,
    ``partitions`` how many partitions a run's stages are mapped over (about the workers' slots),
    ``staging_url`` where the stages hand each other records when the machines share no folder
    (``s3://bucket/prefix``; personal data: a private bucket), ``staging_conn_id`` the Airflow
    connection with its credentials and endpoint (given to every process, e.g. as
    ``AIRFLOW_CONN_<ID>``, like the other connections)."""

    metadata_db: str
    state_db: str
    broker_url: str
    api_url: str
    jwt_secret: str
    partitions: int = 1
    staging_url: str | None = None
    staging_conn_id: str | None = None

    def settings(self) -> dict[str, str]:
        """The environment variables every process of the deployment gets (``airflow.cfg`` keys
        in Airflow's ``AIRFLOW__SECTION__KEY`` form, and the project's own)."""
        staging = {"LIENTHONG_STAGING_URL": self.staging_url} if self.staging_url else {}
        if self.staging_conn_id:
            staging["LIENTHONG_STAGING_CONN_ID"] = self.staging_conn_id
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_db,
            # Airflow would guess asyncpg for its async engine; psycopg 3 serves both ways.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": self.metadata_db,
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            # Task states come back through the metadata database: no second store to run.
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.metadata_db}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url.rstrip('/')}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_name",
            "LIENTHONG_STATE_DB": self.state_db,
            "LIENTHONG_PARTITIONS": str(self.partitions),
            **staging,
        }


def environment(s: Settings, deployment: Deployment) -> dict[str, str]:
    """The embedded environment (paths, connections) with the deployment's settings over it.

    ``s.home`` must be the same shared folder on every machine unless the deployment stages in
    object storage (``staging_url``): the stages hand each other their records through it.
    """
    return {**embedded_environment(s), **deployment.settings()}


def worker_name() -> str:
    """``[core] hostname_callable``: the name a task instance records as where it ran.

    Several workers on one machine share its host name; ``LIENTHONG_WORKER_NAME`` tells them apart.
    """
    return os.environ.get(WORKER_NAME_VARIABLE) or socket.getfqdn()
