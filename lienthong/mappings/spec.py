"""The shape of a mapping spec file, checked on load so a mistake names its place in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lienthong.connectors.streams import Stream

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
    source: Stream
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
        for name, lst in self.lists.items():
            if lst.each not in self.source.children:
                raise ValueError(f"list {name}: {lst.each!r} is not a child collection of the source")
        return self


def load(path: Path) -> MappingSpec:
    with open(path, encoding="utf-8") as handle:
        return MappingSpec.model_validate(yaml.safe_load(handle))
