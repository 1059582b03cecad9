"""Airflow DAG: dossier sync, provincial one-stop system -> national public-service portal.

Thin on purpose: the DAG is built by lienthong.routes.dag_factory from the route's definition.
"""

from lienthong.routes.dag_factory import build_dag
from lienthong.routes.route import get_route

dag = build_dag(get_route("dossier_sync"))
