"""Where lienthong keeps its files and state, read once from the environment.

Everything a run writes lives under one data folder (``LIENTHONG_HOME``, default ``.lienthong/``
in the project) so that a deployment can back it up, wipe it, or point it at shared storage as
one unit. The state database defaults to SQLite there; production sets ``LIENTHONG_STATE_DB`` to
a PostgreSQL URL. Staging defaults to a folder there too; workers on several machines share a
bucket instead (``LIENTHONG_STAGING_URL``, ``s3://bucket/prefix``, with the Airflow connection
``LIENTHONG_STAGING_CONN_ID`` for its credentials and endpoint).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The DAG run conf key (and DAG param) with which one run asks for its own partition count.
PARTITIONS_CONF_KEY = "partitions"
# The most partitions one run may ask for. Each partition is one mapped task per stage (seven),
# each paying about a second of Airflow's task start-up, so partitions beyond the worker slots
# only cost: 64 is a province's whole worker pool (16 machines of 4 slots), well under Airflow's
# own limit on mapped tasks ([core] max_map_length, 1024), while a slip of the keyboard (1000) is
# refused rather than queued as 7,000 task instances.
MAX_PARTITIONS = 64


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    home: Path
    state_db_url: str
    # A run whose staging has not been written for this long, while a new run of its route starts,
    # was abandoned (its worker died). Parts are written every batch, so minutes of silence are death.
    abandoned_after_s: float = 900.0
    # Partitions a run's parts are split into after extract, one mapped task each per stage:
    # 1 embedded (tasks run one after another anyway); about the workers' slots when distributed.
    partitions: int = 1
    # Where stages hand each other records: a URL (``file:///...``, ``s3://bucket/prefix``) or a
    # local path; empty for ``home/staging``. The connection, if any, holds the store's credentials.
    staging_url: str = ""
    staging_conn_id: str | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(os.environ.get("LIENTHONG_HOME") or PROJECT_ROOT / ".lienthong").resolve()
        return cls(
            home=home,
            state_db_url=os.environ.get("LIENTHONG_STATE_DB") or f"sqlite:///{home / 'state.db'}",
            abandoned_after_s=float(os.environ.get("LIENTHONG_ABANDONED_AFTER_S") or 900.0),
            partitions=_partitions_setting(),
            staging_url=os.environ.get("LIENTHONG_STAGING_URL") or "",
            staging_conn_id=os.environ.get("LIENTHONG_STAGING_CONN_ID") or None,
        )

    @cached_property
    def staging_dir(self) -> "ObjectStoragePath":
        """The staging root, local or in object storage (``lienthong.staging``)."""
        from lienthong.staging import staging_path

        return staging_path(self.staging_url or self.home / "staging", self.staging_conn_id)

    @cached_property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @cached_property
    def sandbox_dir(self) -> Path:
        return self.home / "sandbox"

    @cached_property
    def tsa_ca_file(self) -> Path:
        """The CA that time-stamp tokens must chain to (``LIENTHONG_TSA_CA``; default: the sandbox TSA's).

        A trust anchor of the auditor's own, so that ``audit verify`` needs no TSA connection.
        """
        return Path(os.environ.get("LIENTHONG_TSA_CA") or self.sandbox_dir / "tsa" / "tsa-ca.pem")

    @cached_property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @cached_property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @cached_property
    def airflow_home(self) -> Path:
        return self.home / "airflow"


def _partitions_setting() -> int:
    """``LIENTHONG_PARTITIONS``, held to the bounds a run's own count is held to: a worker whose
    setting is wrong says so at its first task, not by planning 1,000 partitions or none."""
    raw = (os.environ.get("LIENTHONG_PARTITIONS") or "1").strip()
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PARTITIONS:
        raise ValueError(f"LIENTHONG_PARTITIONS is {raw!r}: it must be a whole number from 1 to {MAX_PARTITIONS}")
    return int(raw)


def settings() -> Settings:
    """Read per call: tests and the demo switch ``LIENTHONG_HOME`` between runs."""
    return Settings.from_env()
