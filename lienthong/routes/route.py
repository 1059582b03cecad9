"""What a route is made of, as data: built from an approved connector manifest, read by the stages.

A route is one stream of one registered connector feeding one target (dossier sync or status
sync). Its name is the DAG id, ``<agency>__<stream>``. Nothing here is written by hand per route:
the registry builds routes from the manifests it has approved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lienthong.connectors import connection
from lienthong.connectors.streams import Stream
from lienthong.mappings.spec import MappingSpec

Protocol = Literal["odbc", "soap", "rest"]


@dataclass(frozen=True)
class Target:
    """Where a route's records go at the national portal, and what they must pass on the way."""

    name: str
    description: str
    service: str  # the portal's service name in the JSON envelope
    schema_def: str  # the $defs entry of schemas/portal_dossier.schema.json a record must match
    suite_file: str  # the great-expectations suite of the gate
    verify_citizens: bool  # ask the population database about the mapping's subject


TARGETS: dict[str, Target] = {
    "dossier_sync": Target(
        name="dossier_sync",
        description="dossiers to the national public-service portal (DongBoHoSoMC)",
        service="DongBoHoSoMC", schema_def="HoSo", suite_file="dossier_gate.suite.json",
        verify_citizens=True,
    ),
    "status_sync": Target(
        name="status_sync",
        description="dossier processing progress to the national portal (CapNhatTienDoHoSoMC)",
        service="CapNhatTienDoHoSoMC", schema_def="TienDoHoSo", suite_file="status_gate.suite.json",
        verify_citizens=False,
    ),
}


@dataclass(frozen=True)
class Route:
    name: str  # the DAG id: <agency slug>__<stream name>
    connector_id: str
    connector_version: int
    agency_code: str  # QCVN 102
    agency_name: str
    protocol: Protocol
    source_conn: str  # Airflow connection id of the source system
    stream: Stream
    spec: MappingSpec
    mapping_hash: str  # content hash of the mapping as approved
    target: Target
    schedule: str
    signing_key: str  # name of the key in the keys folder that signs for the connector
    retries: int = 2
    portal_conn: str = connection.PORTAL
    population_conn: str | None = connection.POPULATION
    description: str = field(default="")

    @property
    def suite_file(self) -> str:
        return self.target.suite_file


def get_route(name: str) -> Route:
    """The route of an approved, enabled connector stream, as the registry holds it."""
    from lienthong.registry.store import Registry
    from lienthong.settings import settings

    return Registry(settings().state_db_url).route(name)
