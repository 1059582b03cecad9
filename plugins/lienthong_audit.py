"""The auditor page as an Airflow plugin: lienthong's audit app served by Airflow's API server.

Thin on purpose: the page lives in ``lienthong.audit.web``. Here it is mounted under
``/lienthong-audit``, guarded by Airflow's own authentication (the session cookie the UI sets, or a
bearer token), and listed in the UI's left navigation bar, where Airflow shows it in an iframe.

Every Airflow process of the project loads this folder, task processes included, so the app is
built on its first request: FastAPI and Airflow's API security module (about 0.8 s of imports)
are paid by the API server only.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/lienthong-audit"


def _build() -> Callable[..., Awaitable[None]]:
    from fastapi import Depends

    from airflow.api_fastapi.core_api.security import requires_authenticated
    from lienthong.audit.web import create_app

    return create_app(dependencies=[Depends(requires_authenticated())])


class AuditApp:
    """An ASGI app that builds the real one when the first request (or lifespan event) comes."""

    def __init__(self) -> None:
        self._app: Callable[..., Awaitable[None]] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if self._app is None:
            self._app = _build()
        await self._app(scope, receive, send)


class LienthongAuditPlugin(AirflowPlugin):
    name = "lienthong_audit"
    fastapi_apps = [{"name": "lienthong-audit", "app": AuditApp(), "url_prefix": URL_PREFIX}]
    external_views = [{
        "name": "Sync audit",
        "href": URL_PREFIX.lstrip("/") + "/",  # relative to the UI's base URL, as Airflow resolves it
        "url_route": "lienthong-audit",
        "destination": "nav",
        "nav_top_level": True,
    }]
