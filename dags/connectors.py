"""Airflow DAGs: one per stream of every approved, enabled connector in the registry.

Thin on purpose: the registry turns approved manifests into routes and
lienthong.routes.dag_factory turns each route into a DAG called <agency slug>__<stream>. A
connector that is disabled, or not yet approved, has no DAG. If the registry cannot be read the
import fails, so Airflow shows an import error instead of silently losing every DAG.
"""

from lienthong.registry.store import Registry
from lienthong.routes.dag_factory import build_dag
from lienthong.settings import settings

for _route in Registry(settings().state_db_url).approved_routes():
    globals()[_route.name] = build_dag(_route)
