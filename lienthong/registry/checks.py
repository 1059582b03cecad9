"""Everything checked before a manifest is accepted, beyond its own shape.

Its mappings must load and name only what its streams declare, its Airflow connection must exist
and its signing key must be in the keys folder: a manifest that passes here can run as soon as it
is approved. Every problem is reported, located in the file it comes from, in one answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lienthong.mappings.spec import MAPPINGS_DIR, MappingSpec
from lienthong.registry import manifest as mf
from lienthong.registry.located import Invalid, Problem, YamlDoc
from lienthong.signing.canonical import content_hash
from lienthong.signing.keys import KeyPaths, signing_connection


@dataclass(frozen=True)
class StreamMapping:
    """A stream's mapping as submitted: its text (kept for auditors) and its parsed spec."""

    file: str
    text: str
    spec: MappingSpec

    @property
    def data(self) -> dict[str, Any]:
        return self.spec.model_dump(mode="json", by_alias=True)

    @property
    def hash(self) -> str:
        """Of the parsed spec, so that a comment or layout change is not a new mapping."""
        return content_hash(self.data)


@dataclass(frozen=True)
class Submission:
    """A manifest that passed every check, with the mapping of each stream by stream name."""

    doc: YamlDoc
    manifest: mf.Manifest
    mappings: dict[str, StreamMapping]


def mapping_path(manifest_dir: Path, name: str) -> Path | None:
    """Next to the manifest first, then among the project's own mappings."""
    for folder in (manifest_dir, MAPPINGS_DIR):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def submit(path: Path, keys_dir: Path) -> Submission:
    """The checked submission, or ``Invalid`` with every problem of the manifest and its mappings."""
    doc = YamlDoc.read(path)
    problems: list[Problem] = []
    manifest = None
    try:
        manifest = mf.parse(doc)
    except Invalid as exc:
        problems += exc.problems
    data = doc.data if isinstance(doc.data, dict) else {}
    problems += _connection_problems(doc, data)
    problems += _key_problems(doc, data, keys_dir)
    mappings: dict[str, StreamMapping] = {}
    for i, raw in enumerate(data.get("streams") if isinstance(data.get("streams"), list) else []):
        try:
            stream = mf.ManifestStream.model_validate(raw)
        except ValidationError:
            continue  # already reported by parse
        found, located = _mapping(doc, ["streams", i, "mapping"], stream)
        problems += located
        if found is not None:
            mappings[stream.name] = found
    if problems:
        raise Invalid(sorted(problems, key=lambda p: (p.file != doc.file, p.file, p.line)))
    assert manifest is not None
    return Submission(doc, manifest, mappings)


def _mapping(doc: YamlDoc, loc: list[str | int],
             stream: mf.ManifestStream) -> tuple[StreamMapping | None, list[Problem]]:
    path = mapping_path(Path(doc.file).parent, stream.mapping)
    if path is None:
        return None, [doc.problem(loc, f"no mapping file {stream.mapping!r} next to the manifest "
                                       f"or in {MAPPINGS_DIR}")]
    try:
        mapping_doc = YamlDoc.read(path)
    except Invalid as exc:
        return None, exc.problems
    spec, problems = mapping_doc.validate(MappingSpec)
    if spec is None:
        return None, problems
    problems += [doc.problem(loc, f"{stream.mapping}: {message}")
                 for message in spec.problems_with(stream)]
    return StreamMapping(stream.mapping, mapping_doc.text, spec), problems


def _connection_problems(doc: YamlDoc, data: dict[str, Any]) -> list[Problem]:
    conn_id = (data.get("system") or {}).get("connection_id") if isinstance(data.get("system"), dict) else None
    if not isinstance(conn_id, str) or not re.fullmatch(mf.CONNECTION_ID, conn_id):
        return []
    from airflow.sdk.exceptions import AirflowNotFoundException

    from lienthong.connectors.connection import get_connection

    try:
        get_connection(conn_id)
    except AirflowNotFoundException:
        return [doc.problem(["system", "connection_id"], f"no Airflow connection {conn_id!r}: define it in "
                                                         f"Airflow or as AIRFLOW_CONN_{conn_id.upper()}")]
    except Exception as exc:  # a secrets backend that cannot answer: say so, do not guess
        return [doc.problem(["system", "connection_id"], f"connection {conn_id!r} could not be looked up: {exc}")]
    return []


def _key_problems(doc: YamlDoc, data: dict[str, Any], keys_dir: Path) -> list[Problem]:
    """The key must be in ``keys_dir`` or in a PKCS#11 token its Airflow connection points at."""
    from airflow.exceptions import AirflowNotFoundException

    from lienthong.connectors.connection import get_connection

    name = data.get("signing_key")
    if not isinstance(name, str) or not re.fullmatch(mf.KEY_NAME, name):
        return []
    missing = [p.name for p in KeyPaths.named(keys_dir, name) if not p.is_file()]
    if not missing:
        return []
    try:
        get_connection(signing_connection(name))
    except AirflowNotFoundException:
        return [doc.problem(["signing_key"], f"signing key {name!r} is not in {keys_dir} "
                                             f"(missing {', '.join(missing)}) nor in a token "
                                             f"(no pkcs11 connection {signing_connection(name)!r})")]
    return []
    missing = [p.name for p in KeyPaths.named(keys_dir, name) if not p.is_file()]
    if missing:
        return [doc.problem(["signing_key"], f"signing key {name!r} is not in {keys_dir} "
                                             f"(missing {', '.join(missing)})")]
    return []
