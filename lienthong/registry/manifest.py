"""The connector manifest: what an agency writes to put one system on the hub, and nothing more.

A manifest names the agency, its system (protocol and Airflow connection id), the key that signs
for it, and its streams, each a source ``Stream`` plus the mapping and target it feeds. Like an
X-Road subsystem registration or an Airbyte spec, it is data, never code: everything that becomes
SQL, a DAG id or a file name is a plain name checked here.

Its JSON Schema (``schemas/connector_manifest.schema.json``) is generated from these models so
that the two cannot drift: ``python -m lienthong.registry.manifest --schema`` rewrites it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from lienthong.connectors.streams import Stream
from lienthong.registry.located import Invalid, YamlDoc

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "connector_manifest.schema.json"

# QCVN 102:2016/BTTTT agency code: four levels, most specific first, e.g. 000.00.12.H40 (a
# department of Nghệ An). Level 1 is a letter and two digits: H + province for local government,
# G + ministry for central agencies (and the standard's other letters for other branches).
AGENCY_CODE = r"^[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[A-Z][0-9]{2}$"
# The slug and stream name make the DAG id <slug>__<stream>: lower case, single underscores only,
# so that the double underscore splits a DAG id back into its two parts unambiguously.
SLUG = r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$"
CONNECTOR_ID = r"^[a-z0-9]+(-[a-z0-9]+)*$"
CONNECTION_ID = r"^[A-Za-z][A-Za-z0-9_.-]*$"
KEY_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"
MAPPING_FILE = r"^([A-Za-z0-9_-]+/)*[A-Za-z0-9_][A-Za-z0-9_.-]*\.ya?ml$"
PATTERNS = {
    AGENCY_CODE: "a QCVN 102 agency code such as 000.00.12.H40",
    SLUG: "a short name: lower-case letters and digits, words joined by single underscores (stp_h40)",
    CONNECTOR_ID: "a connector id: lower-case letters and digits joined by hyphens (so-tu-phap-nghe-an)",
    CONNECTION_ID: "an Airflow connection id (letters, digits, '_', '.', '-')",
    KEY_NAME: "a key name (letters, digits, '_', '-')",
    MAPPING_FILE: "a mapping file name ending in .yaml, relative to the manifest's folder",
}
# What each protocol reads a stream from; the other two fields must be absent. The protocols and
# targets below are those of connectors.sources.PROTOCOLS and routes.route.TARGETS (a test checks).
WHERE = {"odbc": "table", "soap": "operation", "rest": "resource"}


def cron(value: str) -> str:
    """A five-field cron expression or an Airflow preset (@hourly, @daily ...)."""
    from croniter import croniter

    if not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a cron schedule such as '*/15 * * * *'")
    return value


Cron = Annotated[str, Field(description="cron expression, e.g. '*/15 * * * *', or @hourly/@daily",
                            max_length=100), AfterValidator(cron)]
StreamName = Annotated[str, Field(pattern=SLUG, max_length=40)]


class Agency(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(pattern=SLUG, max_length=40, description="short name; DAG ids start with it")
    code: str = Field(pattern=AGENCY_CODE, description="QCVN 102:2016 agency code, e.g. 000.00.12.H40")
    name: str = Field(min_length=1, max_length=200)


class System(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    protocol: Literal["odbc", "soap", "rest"]
    connection_id: str = Field(pattern=CONNECTION_ID, max_length=250,
                               description="Airflow connection holding the endpoint and credentials")


class ManifestStream(Stream):
    """A source stream, plus where its records go: the target route and the mapping to get there."""

    name: StreamName
    target: Literal["dossier_sync", "status_sync"]
    mapping: str = Field(pattern=MAPPING_FILE, max_length=200, description="mapping spec file, next to the manifest "
                                                           "or one of the project's (lienthong/mappings)")
    schedule: Cron | None = Field(None, description="overrides the manifest's schedule for this stream")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", title="lienthong connector manifest",
                              json_schema_extra=lambda schema: schema.update(allOf=_protocol_schema()))
    manifest_version: Literal[1]
    id: str = Field(pattern=CONNECTOR_ID, max_length=63)
    agency: Agency
    system: System
    signing_key: str = Field(pattern=KEY_NAME, max_length=63,
                             description="name of the key in the keys folder that signs for this connector")
    schedule: Cron
    retries: int = Field(2, ge=0, le=10)
    streams: list[ManifestStream] = Field(min_length=1, max_length=50)

    def route_name(self, stream: ManifestStream) -> str:
        return f"{self.agency.slug}__{stream.name}"

    def source_stream(self, stream: ManifestStream) -> Stream:
        """The stream as the sources read it, without what only the registry needs."""
        return Stream.model_validate(stream.model_dump(exclude={"target", "mapping", "schedule"}))


def protocol_problems(data: Any) -> list[tuple[list[str | int], str]]:
    """What each protocol needs of a stream, checked on the raw data so that these problems are
    reported together with the structural ones, as (location, message)."""
    if not isinstance(data, dict) or not isinstance(data.get("system"), dict):
        return []
    protocol = data["system"].get("protocol")
    streams = data.get("streams")
    if protocol not in WHERE or not isinstance(streams, list):
        return []
    found: list[tuple[list[str | int], str]] = []
    names: dict[str, int] = {}
    for i, stream in enumerate(streams):
        if not isinstance(stream, dict):
            continue
        here: list[str | int] = ["streams", i]
        if stream.get("name") in names:
            found.append((here + ["name"], f"stream {stream['name']!r} is declared twice"))
        names.setdefault(stream.get("name", "records"), i)
        needed = WHERE[protocol]
        if not stream.get(needed):
            found.append((here, f"a {protocol} stream needs '{needed}'"))
        for other in set(WHERE.values()) - {needed}:
            if other in stream:
                found.append((here + [other], f"not used by {protocol} (it reads '{needed}')"))
        if protocol != "odbc" and stream.get("joins"):
            found.append((here + ["joins"], f"joins are for odbc tables; a {protocol} record nests its "
                                             "to-one objects: declare their fields as object.field columns"))
        children = stream.get("children")
        for name, child in (children.items() if isinstance(children, dict) else ()):
            if not isinstance(child, dict):
                continue
            if protocol == "odbc":
                for key in ("table", "foreign_key"):
                    if not child.get(key):
                        found.append((here + ["children", name], f"an odbc child needs '{key}'"))
            else:
                for key in ("table", "foreign_key"):
                    if key in child:
                        found.append((here + ["children", name, key],
                                      f"not used by {protocol}: its children arrive nested in each record"))
    return found


def parse(doc: YamlDoc) -> Manifest:
    """The manifest of a YAML document, or ``Invalid`` with every problem found in it."""
    manifest, problems = doc.validate(Manifest, PATTERNS)
    problems += [doc.problem(loc, message) for loc, message in protocol_problems(doc.data)]
    if problems:
        raise Invalid(sorted(set(problems), key=lambda p: (p.line, p.path, p.message)))
    assert manifest is not None
    return manifest


def read(path: Path) -> Manifest:
    return parse(YamlDoc.read(path))


def _protocol_schema() -> list[dict[str, Any]]:
    """The per-protocol rules as JSON Schema conditionals, for editors and other validators."""
    rules = []
    for protocol, needed in WHERE.items():
        item: dict[str, Any] = {"required": [needed], "not": {"anyOf": [
            {"required": [other]} for other in WHERE.values() if other != needed]}}
        if protocol != "odbc":
            item["properties"] = {"joins": {"maxItems": 0}}
        else:
            item["properties"] = {"children": {"additionalProperties": {"required": ["table", "foreign_key"]}}}
        rules.append({"if": {"properties": {"system": {"properties": {"protocol": {"const": protocol}}}}},
                      "then": {"properties": {"streams": {"items": item}}}})
    return rules


def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://lienthong.example/schemas/connector_manifest.schema.json", **schema}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--schema"]:
        SCHEMA_FILE.write_text(schema_text(), encoding="utf-8")
        print(f"wrote {SCHEMA_FILE}")
    else:
        raise SystemExit("usage: python -m lienthong.registry.manifest --schema")
