"""The shape of a mapping spec file, checked on load so a mistake names its place in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lienthong.connectors.streams import Stream

# The national formats' mappings shipped with the project; a manifest may bring its own.
MAPPINGS_DIR = Path(__file__).resolve().parent

Transform = Literal["text", "name", "datetime", "date", "int"]


class FieldSpec(BaseModel):
    """One target field: copied ``from`` a source column (or a constant), then transformed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: str | None = Field(None, alias="from")
    const: Any = None
    transform: Transform | None = None
    code_table: str | None = None
    default: Any = None

    @model_validator(mode="after")
    def _one_origin(self) -> "FieldSpec":
        if (self.source is None) == (self.const is None):
            raise ValueError("give exactly one of 'from' or 'const'")
        return self


class ListSpec(BaseModel):
    """A target list built from a child collection of the source row."""

    model_config = ConfigDict(extra="forbid")
    each: str
    fields: dict[str, FieldSpec]


class Subject(BaseModel):
    """Which source columns identify the citizen to verify against the population database."""

    model_config = ConfigDict(extra="forbid")
    personal_id: str
    full_name: str
    date_of_birth: str
    gender: str


class MappingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: int = Field(ge=1)
    description: str = ""
    key: str = Field(description="target field that identifies a record (MaHoSo)")
    source_timezone: str = "Asia/Ho_Chi_Minh"
    subject: Subject | None = None
    fields: dict[str, FieldSpec]
    lists: dict[str, ListSpec] = Field(default_factory=dict)
    code_tables: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> "MappingSpec":
        if self.key not in self.fields:
            raise ValueError(f"key {self.key!r} is not one of the mapped fields")
        specs = list(self.fields.items()) + [
            (f"{name}[].{k}", v) for name, lst in self.lists.items() for k, v in lst.fields.items()
        ]
        for target, spec in specs:
            if spec.code_table and spec.code_table not in self.code_tables:
                raise ValueError(f"field {target}: code table {spec.code_table!r} is not defined")
        return self

    def problems_with(self, stream: Stream) -> list[str]:
        """What this mapping names that ``stream`` does not declare: one message per problem.

        Mappings and streams are written apart (the mapping by whoever knows the national format,
        the stream in the agency's manifest), so they are checked against each other on
        registration, and against the live system by ``connectors check``.
        """
        offered = stream.fields()
        problems = []
        for target, spec in self.fields.items():
            if spec.source is not None and spec.source not in offered:
                problems.append(f"field {target}: column {spec.source!r} is not in stream {stream.name!r}")
        for name, lst in self.lists.items():
            child = stream.children.get(lst.each)
            if child is None:
                problems.append(f"list {name}: {lst.each!r} is not a child collection of stream {stream.name!r}")
                continue
            for target, spec in lst.fields.items():
                if spec.source is not None and spec.source not in child.columns:
                    problems.append(f"list {name}[].{target}: column {spec.source!r} is not in {lst.each!r}")
        if self.subject is not None:
            for role, column in self.subject.model_dump().items():
                if column not in offered:
                    problems.append(f"subject {role}: column {column!r} is not in stream {stream.name!r}")
        return problems


def load(path: Path) -> MappingSpec:
    with open(path, encoding="utf-8") as handle:
        return MappingSpec.model_validate(yaml.safe_load(handle))
