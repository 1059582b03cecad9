"""What a route is made of, as data; the stages and the DAG factory read it, nothing else does."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from lienthong.connectors import connection
from lienthong.mappings.spec import MappingSpec, load

MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "mappings"


@dataclass(frozen=True)
class Route:
    name: str
    description: str
    mapping_file: str
    suite_file: str
    source_conn: str
    portal_conn: str
    population_conn: str | None
    schedule: str

    @cached_property
    def spec(self) -> MappingSpec:
        return load(MAPPINGS_DIR / self.mapping_file)


ROUTES: dict[str, Route] = {
    "dossier_sync": Route(
        name="dossier_sync",
        description=(
            "Dossiers of the provincial one-stop system to the national public-service portal "
            "(DongBoHoSoMC), applicants verified against the population database."
        ),
        mapping_file="dossier.yaml",
        suite_file="dossier_gate.suite.json",
        source_conn=connection.DOSSIER_DB,
        portal_conn=connection.PORTAL,
        population_conn=connection.POPULATION,
        schedule="*/15 * * * *",
    ),
}


def get_route(name: str) -> Route:
    try:
        return ROUTES[name]
    except KeyError:
        raise KeyError(f"unknown route {name!r}; known: {', '.join(ROUTES)}") from None
