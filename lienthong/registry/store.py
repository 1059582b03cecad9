"""The connector registry in the state database: manifests, their versions, who approved what.

The tables sit on the ledger's metadata, so registrations, approvals and disablings live in the
same database as the runs and can be audited with them.

Versions. Registering content already held as the latest version changes nothing (a comment or
layout edit is not a change: the hash is over the parsed manifest and mappings). Any other change
becomes a new version with status ``registered``, which runs only once approved. Until then the
previously approved version stays live: an agency correcting a field must not stop its dossiers
flowing, and an unreviewed change must never run, so the hub keeps running what was reviewed.
Approving a version supersedes the live one (approving an older version is a roll-back);
registering a version supersedes an earlier one still waiting for approval. Disabling stops the
connector's routes until a version is approved again.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Column, DateTime, Integer, String, Table, Text, insert, select,
                        update)
from sqlalchemy.engine import Connection

from lienthong.audit.ledger import FAILED, engine, metadata, runs
from lienthong.mappings.spec import MappingSpec
from lienthong.registry.manifest import Manifest
from lienthong.routes.route import TARGETS, Route
from lienthong.signing.canonical import canonical_json, content_hash

REGISTERED, APPROVED, DISABLED, SUPERSEDED = "registered", "approved", "disabled", "superseded"

connectors = Table(
    "connectors", metadata,
    Column("id", String(63), primary_key=True),
    # The slug names the routes and so their cursors: it is fixed at the first registration.
    Column("agency_slug", String(40), nullable=False, unique=True),
    Column("status", String(20), nullable=False),  # registered, approved or disabled
    Column("current_version", Integer),  # the approved version that runs; none until one is approved
    Column("latest_version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

connector_versions = Table(
    "connector_versions", metadata,
    Column("connector_id", String(63), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("manifest_text", Text, nullable=False),  # as the agency wrote it, comments included
    Column("manifest_json", Text, nullable=False),  # canonical JSON (RFC 8785) of the parsed manifest
    # stream name -> {"file", "text" (as written), "spec" (parsed), "hash" (of the parsed spec)}
    Column("mappings", JSON, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("status", String(20), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(100), nullable=False),
)

connector_events = Table(
    "connector_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("connector_id", String(63), nullable=False, index=True),
    Column("version", Integer),
    Column("action", String(20), nullable=False),  # register, approve or disable
    Column("actor", String(100), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("detail", Text),
)


class RegistryError(Exception):
    """A registry request refused (unknown connector, slug taken ...): its text says why."""


@dataclass(frozen=True)
class StoredVersion:
    connector_id: str
    version: int
    status: str
    manifest: Manifest
    mappings: dict[str, dict[str, Any]]
    manifest_text: str


class Registry:
    def __init__(self, url: str) -> None:
        self.engine = engine(url)
        metadata.create_all(self.engine)  # only creates what is missing

    # -- agency and engineer actions ------------------------------------------------------

    def register(self, path: Path, actor: str) -> tuple[str, int, bool]:
        """Check a manifest and its mappings and store them: (id, version, whether it is new).

        Raises ``located.Invalid`` listing every problem, ``RegistryError`` when the slug clashes.
        """
        from lienthong.registry.checks import submit
        from lienthong.settings import settings

        sub = submit(Path(path), settings().keys_dir)
        m = sub.manifest
        mappings = {name: {"file": sm.file, "text": sm.text, "spec": sm.data, "hash": sm.hash}
                    for name, sm in sub.mappings.items()}
        manifest_json = canonical_json(m.model_dump(mode="json")).decode()
        digest = content_hash({"manifest": json.loads(manifest_json),
                               "mappings": {name: mp["hash"] for name, mp in mappings.items()}})
        with self.engine.begin() as conn:
            row = conn.execute(select(connectors).where(connectors.c.id == m.id)).mappings().first()
            owner = conn.execute(select(connectors.c.id).where(connectors.c.agency_slug == m.agency.slug)).scalar()
            if owner is not None and owner != m.id:
                raise RegistryError(f"{path}: agency slug {m.agency.slug!r} already belongs to connector {owner!r}")
            if row is not None and row["agency_slug"] != m.agency.slug:
                raise RegistryError(
                    f"{path}: connector {m.id!r} has agency slug {row['agency_slug']!r}; the slug names its "
                    "routes and their cursors, so it cannot change: register a new connector id instead")
            if row is not None:
                latest = self._version_row(conn, m.id, row["latest_version"])
                if latest["content_hash"] == digest:
                    return m.id, latest["version"], False
            version = 1 if row is None else row["latest_version"] + 1
            now = _now()
            conn.execute(update(connector_versions)
                         .where(connector_versions.c.connector_id == m.id, connector_versions.c.status == REGISTERED)
                         .values(status=SUPERSEDED))
            conn.execute(insert(connector_versions).values(
                connector_id=m.id, version=version, manifest_text=sub.doc.text, manifest_json=manifest_json,
                mappings=mappings, content_hash=digest, status=REGISTERED, created_at=now, created_by=actor))
            if row is None:
                conn.execute(insert(connectors).values(id=m.id, agency_slug=m.agency.slug, status=REGISTERED,
                                                       current_version=None, latest_version=version, updated_at=now))
            else:
                conn.execute(update(connectors).where(connectors.c.id == m.id)
                             .values(latest_version=version, updated_at=now))
            self._event(conn, m.id, version, "register", actor, f"from {path}, content {digest[:16]}")
        return m.id, version, True

    def approve(self, connector_id: str, actor: str, version: int | None = None) -> int:
        """Make ``version`` (default: the latest) the one that runs; returns it. Approving the
        version already live and enabled changes nothing and records nothing."""
        with self.engine.begin() as conn:
            row = self._connector(conn, connector_id)
            version = version or row["latest_version"]
            self._version_row(conn, connector_id, version)
            if row["status"] == APPROVED and row["current_version"] == version:
                return version
            now = _now()
            conn.execute(update(connector_versions)
                         .where(connector_versions.c.connector_id == connector_id,
                                connector_versions.c.status.in_([APPROVED, DISABLED]))
                         .values(status=SUPERSEDED))
            conn.execute(update(connector_versions)
                         .where(connector_versions.c.connector_id == connector_id,
                                connector_versions.c.version == version)
                         .values(status=APPROVED))
            conn.execute(update(connectors).where(connectors.c.id == connector_id)
                         .values(status=APPROVED, current_version=version, updated_at=now))
            previous = row["current_version"]
            self._event(conn, connector_id, version, "approve", actor,
                        f"replaces version {previous}" if previous and previous != version else None)
        return version

    def disable(self, connector_id: str, actor: str) -> None:
        """Stop every route of the connector (their DAGs disappear) until a version is approved."""
        with self.engine.begin() as conn:
            row = self._connector(conn, connector_id)
            if row["status"] == DISABLED:
                return
            conn.execute(update(connector_versions)
                         .where(connector_versions.c.connector_id == connector_id,
                                connector_versions.c.status == APPROVED)
                         .values(status=DISABLED))
            conn.execute(update(connectors).where(connectors.c.id == connector_id)
                         .values(status=DISABLED, updated_at=_now()))
            self._event(conn, connector_id, row["current_version"], "disable", actor, None)

    # -- reading --------------------------------------------------------------------------

    def version(self, connector_id: str, version: int | None = None) -> StoredVersion:
        """A stored version; by default the one awaiting approval, else the live one."""
        with self.engine.connect() as conn:
            row = self._connector(conn, connector_id)
            if version is None:
                latest = self._version_row(conn, connector_id, row["latest_version"])
                version = row["latest_version"] if latest["status"] == REGISTERED or not row["current_version"] \
                    else row["current_version"]
            found = self._version_row(conn, connector_id, version)
        return StoredVersion(connector_id, found["version"], found["status"],
                             Manifest.model_validate_json(found["manifest_json"]), found["mappings"],
                             found["manifest_text"])

    def events(self, connector_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(connector_events).where(connector_events.c.connector_id == connector_id)
                                .order_by(connector_events.c.id)).mappings()
            return [dict(r) for r in rows]

    def list(self) -> list[dict[str, Any]]:
        """Every connector with its status, live and latest version, and its routes' last run
        and last failed run from the ledger."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(connectors, connector_versions.c.manifest_json)
                .join(connector_versions, (connector_versions.c.connector_id == connectors.c.id)
                      & (connector_versions.c.version == connectors.c.latest_version))
                .order_by(connectors.c.id)).mappings().all()
            listed = []
            for row in rows:
                m = Manifest.model_validate_json(row["manifest_json"])
                names = [m.route_name(s) for s in m.streams]
                listed.append({
                    "id": row["id"], "agency": m.agency.slug, "agency_name": m.agency.name,
                    "protocol": m.system.protocol, "status": row["status"],
                    "version": row["current_version"], "latest_version": row["latest_version"],
                    "awaiting_approval": row["latest_version"] != row["current_version"]
                    and row["status"] != DISABLED,
                    "routes": names,
                    "last_run": _run_summary(conn, names, None),
                    "last_error": _run_summary(conn, names, FAILED),
                })
        return listed

    def approved_routes(self) -> list[Route]:
        """Every stream of every approved, enabled connector, as the version approved holds it."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(connector_versions.c.connector_id, connector_versions.c.version,
                       connector_versions.c.manifest_json, connector_versions.c.mappings)
                .join(connectors, (connectors.c.id == connector_versions.c.connector_id)
                      & (connectors.c.current_version == connector_versions.c.version))
                .where(connectors.c.status == APPROVED)
                .order_by(connector_versions.c.connector_id)).all()
        return [route for row in rows for route in _routes(*row)]

    def route(self, name: str) -> Route:
        """The route called ``name`` (``<agency slug>__<stream>``) if its connector is approved and
        enabled; ``KeyError`` naming it otherwise."""
        slug, _, _ = name.partition("__")
        with self.engine.connect() as conn:
            row = conn.execute(
                select(connector_versions.c.connector_id, connector_versions.c.version,
                       connector_versions.c.manifest_json, connector_versions.c.mappings)
                .join(connectors, (connectors.c.id == connector_versions.c.connector_id)
                      & (connectors.c.current_version == connector_versions.c.version))
                .where(connectors.c.status == APPROVED, connectors.c.agency_slug == slug)).first()
        for route in _routes(*row) if row else []:
            if route.name == name:
                return route
        raise KeyError(f"no route {name!r}: no approved, enabled connector has that stream "
                       "(see `lienthong connectors list`)")

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _connector(conn: Connection, connector_id: str) -> Any:
        row = conn.execute(select(connectors).where(connectors.c.id == connector_id)).mappings().first()
        if row is None:
            raise RegistryError(f"no connector {connector_id!r} is registered")
        return row

    @staticmethod
    def _version_row(conn: Connection, connector_id: str, version: int) -> Any:
        row = conn.execute(select(connector_versions).where(
            connector_versions.c.connector_id == connector_id,
            connector_versions.c.version == version)).mappings().first()
        if row is None:
            raise RegistryError(f"connector {connector_id!r} has no version {version}")
        return row

    @staticmethod
    def _event(conn: Connection, connector_id: str, version: int | None, action: str, actor: str,
               detail: str | None) -> None:
        conn.execute(insert(connector_events).values(connector_id=connector_id, version=version, action=action,
                                                     actor=actor, at=_now(), detail=detail))


def _routes(connector_id: str, version: int, manifest_json: str, mappings: dict[str, Any]) -> list[Route]:
    m = Manifest.model_validate_json(manifest_json)
    routes = []
    for s in m.streams:
        mapping, target = mappings[s.name], TARGETS[s.target]
        routes.append(Route(
            name=m.route_name(s), connector_id=connector_id, connector_version=version,
            agency_code=m.agency.code, agency_name=m.agency.name, protocol=m.system.protocol,
            source_conn=m.system.connection_id, stream=m.source_stream(s),
            spec=MappingSpec.model_validate(mapping["spec"]), mapping_hash=mapping["hash"], target=target,
            schedule=s.schedule or m.schedule, signing_key=m.signing_key, retries=m.retries,
            description=f"{m.agency.name}: {s.name} ({m.system.protocol}) to {target.description}",
        ))
    return routes


def _run_summary(conn: Connection, routes: list[str], status: str | None) -> dict[str, Any] | None:
    query = select(runs.c.route, runs.c.status, runs.c.started_at, runs.c.counts).where(runs.c.route.in_(routes))
    if status is not None:
        query = query.where(runs.c.status == status)
    row = conn.execute(query.order_by(runs.c.started_at.desc()).limit(1)).mappings().first()
    if row is None:
        return None
    counts = row["counts"] or {}
    return {"route": row["route"], "status": row["status"], "at": row["started_at"],
            "pulled": counts.get("pulled"), "pending": counts.get("pending")}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
