"""Airflow connections as the one place where endpoints and credentials live."""

from __future__ import annotations

import json
import os
from typing import Any

# The connection ids of the dossier route. In the embedded default the sandbox provides them as
# AIRFLOW_CONN_* environment variables; in production they come from Airflow's secrets backend.
DOSSIER_DB = "lienthong_dossier_db"
POPULATION = "lienthong_population"
PORTAL = "lienthong_portal"
# The sandbox's other dossier systems: a district's over SOAP, a commune's over REST.
DISTRICT_SOAP = "lienthong_district_soap"
COMMUNE_REST = "lienthong_commune_rest"
# The time-stamping authority (RFC 3161) that dates each run manifest.
TSA = "lienthong_tsa"


def get_connection(conn_id: str) -> Any:
    """Airflow's own lookup (env vars, secrets backend, metadata DB), in and outside tasks."""
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


def base_url(conn: Any) -> str:
    """``scheme://host:port`` of an HTTP-based connection; ``schema`` holds the scheme."""
    scheme = conn.schema or "http"
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{conn.host}{port}"


def use_connections(conns: dict[str, dict[str, Any]]) -> None:
    """Offer connections the way the embedded default does: as AIRFLOW_CONN_* variables.

    Ones already set in the environment win, so an operator's own connections are never replaced.
    """
    for conn_id, conn in conns.items():
        os.environ.setdefault(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
