"""Dossier sync: provincial one-stop system -> national public-service portal, every 15 minutes."""

from lienthong.routes.dag_factory import build_dag
from lienthong.routes.route import get_route

dag = build_dag(get_route("dossier_sync"))
