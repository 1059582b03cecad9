"""A commune's dossier system (UBND xã) with a modern REST/JSON interface and cursor pagination.

``GET /api/v1/dossiers?after=<cursor>&limit=N`` answers ``{"items": [...], "next_cursor": ...}``
with the applicant nested as an object and the documents as a list, behind HTTP Basic or a bearer
token (the account's password). ``next_cursor`` is null on the last page. The cursor is the
base64url JSON ``{"updated_at": ..., "id": ...}`` of the last item: documented, so that a client
that keeps its own (updated_at, id) position can resume from it (see :func:`encode_cursor`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from werkzeug.wrappers import Request, Response

from lienthong.sandbox.dossier_system import APPLICANT, COMMUNE, DossierPages, credentials
from lienthong.sandbox.faults import FaultConfig, FaultSwitch

RESOURCE = "/api/v1/dossiers"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def encode_cursor(updated_at: str, key: int) -> str:
    raw = json.dumps({"updated_at": updated_at, "id": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[str, int]:
    """Raises ValueError for anything but a cursor this service could have made."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return dt.datetime.fromisoformat(data["updated_at"]).isoformat(), int(data["id"])
    except (binascii.Error, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError("not a cursor of this service") from exc


def _json(body: Any, status: int = 200, **headers: str) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json",
                    headers=headers)


class DossierRestService:
    def __init__(self, pages: DossierPages, login: str, password: str) -> None:
        self.pages = pages
        self._login, self._password = login, password

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        if request.path.rstrip("/") != RESOURCE:
            response = _json({"error": "not found"}, 404)
        elif not self._authorised(request):
            response = _json({"error": "authentication required"}, 401,
                             **{"WWW-Authenticate": 'Basic realm="dossiers", Bearer'})
        elif request.method != "GET":
            response = _json({"error": "method not allowed"}, 405, Allow="GET")
        else:
            response = self._list(request)
        return response(environ, start_response)

    def _authorised(self, request: Request) -> bool:
        """Basic with the account, or a bearer token equal to its password; compared in constant time."""
        auth = request.authorization
        if auth is None:
            return False
        if auth.type == "basic":
            return hmac.compare_digest(f"{auth.username}\0{auth.password}", f"{self._login}\0{self._password}")
        return auth.type == "bearer" and hmac.compare_digest(auth.token or "", self._password)

    def _list(self, request: Request) -> Response:
        try:
            limit = int(request.args.get("limit", DEFAULT_LIMIT))
            after = decode_cursor(request.args["after"]) if request.args.get("after") else None
        except ValueError as exc:
            return _json({"error": f"bad query: {exc}"}, 400)
        if not 1 <= limit <= MAX_LIMIT:
            return _json({"error": f"limit must be between 1 and {MAX_LIMIT}"}, 400)
        rows, more = self.pages.page(after, limit)
        items = [_item(row) for row in rows]
        last = items[-1] if items else None
        next_cursor = encode_cursor(last["updated_at"], last["id"]) if more and last else None
        return _json({"items": items, "next_cursor": next_cursor})


def _item(row: dict[str, Any]) -> dict[str, Any]:
    item = {k: v for k, v in row.items() if not k.startswith("applicant.")}
    applicant = {c: row[f"applicant.{c}"] for c in APPLICANT}
    item["applicant"] = applicant if applicant["full_name"] is not None else None
    return item


def create_app(db_path: Path, data_dir: Path, faults: FaultConfig | None = None) -> FaultSwitch:
    login, password = credentials(data_dir, COMMUNE)
    return FaultSwitch(DossierRestService(DossierPages(db_path), login, password), faults)
