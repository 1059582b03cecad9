"""What a source stream is, independent of protocol: its table or resource, key, cursor and shape.

Modelled on dlt's incremental and Singer's state: the cursor is a small value object, saved only
once every record up to it is settled (acknowledged or quarantined), and compared as the pair
(cursor field, primary key) so that many rows sharing one updated-at are neither lost nor repeated.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def identifier(value: str) -> str:
    """Names from a spec become SQL identifiers: only plain names pass, never SQL text."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain name (letters, digits, underscore)")
    return value


Name = Annotated[str, AfterValidator(identifier)]


_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_RESOURCE = re.compile(r"^(/[A-Za-z0-9_.~-]+)+$")
# Bounds on what a manifest may declare: far above any real system, far below a denial of service.
MAX_RESOURCE = 200
MAX_COLUMNS = 1000
MAX_JOINS = 20


def field_path(value: str) -> str:
    """A column of a row: a plain name, or ``object.name`` for a to-one object (SOAP, REST)."""
    if not isinstance(value, str) or not _FIELD_PATH.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a field name (a name, or object.name)")
    return value


def resource_path(value: str) -> str:
    """A REST resource path: slash-separated plain segments, no query, no '..', no scheme."""
    if not isinstance(value, str) or len(value) > MAX_RESOURCE:
        raise ValueError(f"a resource path is at most {MAX_RESOURCE} characters")
    if not _RESOURCE.fullmatch(value) or "/../" in f"{value}/" or "/./" in f"{value}/":
        raise ValueError(f"{value!r} is not a resource path such as /api/v1/dossiers")
    return value


FieldPath = Annotated[str, AfterValidator(field_path)]
ResourcePath = Annotated[str, AfterValidator(resource_path)]


class Join(BaseModel):
    """A to-one table joined onto each row (ODBC); its columns arrive as ``<alias>.<column>``."""

    model_config = ConfigDict(extra="forbid")
    table: Name
    alias: Name
    local_key: Name
    remote_key: Name
    columns: list[Name] = Field(max_length=MAX_COLUMNS)


class Child(BaseModel):
    """A to-many collection; its rows arrive as a list on the record.

    Over ODBC it is a table fetched per batch by foreign key; SOAP and REST systems send it nested
    in the record, so only its columns are declared.
    """

    model_config = ConfigDict(extra="forbid")
    table: Name | None = None
    foreign_key: Name | None = None
    order_by: Name = "id"
    columns: list[Name] = Field(max_length=MAX_COLUMNS)


class Stream(BaseModel):
    """One stream of a source system: where it is read (a table, a SOAP operation or a REST
    resource, by protocol), its key, its cursor and the columns a mapping may use."""

    model_config = ConfigDict(extra="forbid")
    name: Name = "records"
    table: Name | None = None  # odbc
    operation: Name | None = None  # soap
    resource: ResourcePath | None = None  # rest
    primary_key: Name
    cursor_field: Name
    columns: list[FieldPath] = Field(max_length=MAX_COLUMNS)
    joins: list[Join] = Field(default_factory=list, max_length=MAX_JOINS)
    children: dict[Name, Child] = Field(default_factory=dict, max_length=MAX_JOINS)
    page_size: int = Field(500, ge=1, le=50_000)

    def fields(self) -> set[str]:
        """Every field a mapping may name: columns, joined ``alias.column`` and the key fields."""
        found = {self.primary_key, self.cursor_field, *self.columns}
        found.update(f"{j.alias}.{c}" for j in self.joins for c in j.columns)
        return found


class Cursor(BaseModel):
    """Position after the last settled record: its cursor value and its primary key."""

    model_config = ConfigDict(frozen=True)
    value: str | int
    kind: str = Field(description="datetime, int or str: how the value is bound as a parameter")
    key: str | int

    @classmethod
    def of(cls, value: Any, key: str | int) -> "Cursor":
        if isinstance(value, dt.datetime):
            return cls(value=value.isoformat(timespec="microseconds"), kind="datetime", key=key)
        if isinstance(value, int):
            return cls(value=value, kind="int", key=key)
        return cls(value=str(value), kind="str", key=key)

    def parameter(self) -> Any:
        if self.kind == "datetime":
            return dt.datetime.fromisoformat(str(self.value))
        return self.value
