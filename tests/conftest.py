"""Shared fixtures: a private data folder per test, and the dossier database over real ODBC."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyodbc
import pytest

from lienthong.sandbox import dossier_db
from lienthong.sandbox.http import free_port
from lienthong.settings import Settings
from lienthong.signing.jws import Signer
from lienthong.signing.keys import init_keys, load_signer, load_trust_store
from lienthong.signing.trust import TrustStore


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end runs first. On parallel workers the suite's wall time is set by its tail: a
    two-minute run handed out last keeps one worker busy while the others have nothing left to do."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# The test command runs pytest-xdist workers side by side: each has its own PostgreSQL and MariaDB
# database (scripts/ensure-postgres.sh and ensure-mariadb.sh make them), as each test has its own
# folder.
TEST_DATABASE = "lienthong_test" + (f"_{os.environ['PYTEST_XDIST_WORKER']}"
                                    if "PYTEST_XDIST_WORKER" in os.environ else "")
POSTGRES = ("DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;PORT=5432;"
            f"DATABASE={TEST_DATABASE};UID=lienthong;PWD=lienthong")
MARIADB = ("DRIVER={MariaDB Unicode};SERVER=localhost;SOCKET=/run/mysqld/mysqld.sock;"
           f"DATABASE={TEST_DATABASE};UID=lienthong;PWD=lienthong")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LIENTHONG_STATE_DB", raising=False)
    return Settings.from_env()


def sqlite_connection_string(path: Path) -> str:
    return f"DRIVER={{SQLite3}};DATABASE={path}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb)])
def dossier_conn_str(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty dossier database behind a real ODBC driver: SQLite3, psqlODBC and MariaDB's."""
    conn_str = {"sqlite": sqlite_connection_string(tmp_path / "dossiers.db"), "postgres": POSTGRES,
                "mariadb": MARIADB}[request.param]
    with pyodbc.connect(conn_str, autocommit=False) as conn:
        dossier_db.create_schema(conn, reset=True)
    yield conn_str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sandbox CA and agency key, made once per test module."""
    keys_dir = tmp_path_factory.mktemp("keys")
    init_keys(keys_dir)
    return keys_dir


@pytest.fixture(scope="module")
def signer(keys: Path) -> Signer:
    return load_signer(keys)


@pytest.fixture(scope="module")
def trust(keys: Path) -> TrustStore:
    return load_trust_store(keys)


# The same database for libpq (psycopg) and for SQLAlchemy.
POSTGRES_URL = f"postgresql://lienthong:lienthong@127.0.0.1:5432/{TEST_DATABASE}"
POSTGRES_STATE_DB = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The state database through SQLAlchemy: the SQLite default and PostgreSQL by URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    from sqlalchemy import create_engine

    from lienthong.audit.ledger import metadata

    engine = create_engine(POSTGRES_STATE_DB)
    metadata.drop_all(engine)
    engine.dispose()
    yield POSTGRES_STATE_DB


STAGING_CONN_ID = "lienthong_staging"
# moto takes any credentials; Airflow masks a connection's secret in logs only from 5 characters.
S3_KEY, S3_SECRET = "moto-access-key", "moto-secret-key"
STAGING_STORES = ["local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, over real HTTP on a port of its own: the protocol s3fs speaks to a bucket."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.skip("moto[server] is not installed (it is in the test extra: scripts/setup-venv.sh)")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_client(endpoint: str) -> Any:
    """boto3's S3 client for moto's server: what the tests check a bucket with, apart from staging's own code."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=S3_KEY,
                        aws_secret_access_key=S3_SECRET)


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, and the Airflow connection to it (aws, the endpoint in its extra) as an
    environment variable, which the processes of an Airflow run inherit. Returns the staging URL
    in it, for ``LIENTHONG_STAGING_URL`` (or a ``Deployment``'s ``staging_url``)."""
    bucket = f"staging-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    monkeypatch.setenv(f"AIRFLOW_CONN_{STAGING_CONN_ID.upper()}", json.dumps({
        "conn_type": "aws", "login": S3_KEY, "password": S3_SECRET,
        "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}))
    # Airflow keeps one store per connection id for the life of the process, with the filesystem
    # it built from the connection as it then was: a store an earlier test in this worker made
    # (test_distributed names the same connection id, with no endpoint set) would send this one's
    # requests to AWS itself. A fresh cache for the test; monkeypatch restores the old one.
    from airflow.sdk.io import store

    monkeypatch.setattr(store, "_STORE_CACHE", {})
    return f"s3://{bucket}/staging"


@pytest.fixture
def s3_staging(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Staging in ``s3_bucket`` for this process and the ones it starts, chosen by the settings."""
    monkeypatch.setenv("LIENTHONG_STAGING_URL", s3_bucket)
    monkeypatch.setenv("LIENTHONG_STAGING_CONN_ID", STAGING_CONN_ID)
    return s3_bucket


@pytest.fixture(params=STAGING_STORES)
def staged_home(request: pytest.FixtureRequest, home: Settings) -> Settings:
    """``home`` with its staging in the local folder (the default) or in an S3 bucket."""
    if request.param == "s3":
        request.getfixturevalue("s3_staging")
    return Settings.from_env()
