"""Applies a :class:`MappingSpec` to source rows, one record's errors never stopping the others.

A spec is compiled once into plain functions per field, so mapping costs a few dict look-ups per
field and record. A value that cannot be mapped (an unknown code, a malformed date) becomes an
error naming the target field and the rule; the record goes on to the gate, which quarantines it
with every reason it has.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable
from zoneinfo import ZoneInfo

from lienthong.mappings.spec import FieldSpec, MappingSpec

NATIONAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")  # dates on the national side: yyyyMMddHHmmss, UTC+7
_SPACES = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class MappingError(ValueError):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass
class Mapped:
    payload: dict[str, Any]
    errors: list[dict[str, str]] = field(default_factory=list)


def _text(value: Any) -> str:
    text = unicodedata.normalize("NFC", str(value))
    if _CONTROL.search(text):
        raise MappingError("control_characters", "contains control characters")
    return text.strip()


def _name(value: Any) -> str:
    words = _SPACES.split(_text(value))
    return " ".join(w[:1].upper() + w[1:].lower() for w in words if w)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MappingError("not_an_integer", "is not an integer") from None


def _parse(value: Any) -> dt.datetime:
    try:
        return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise MappingError("bad_datetime", "is not a date and time") from None


class MappingEngine:
    def __init__(self, spec: MappingSpec) -> None:
        self.spec = spec
        self._source_tz = ZoneInfo(spec.source_timezone)
        self._fields = {target: self._compile(target, f) for target, f in spec.fields.items()}
        self._lists = {
            target: (lst.each, {t: self._compile(f"{target}[].{t}", f) for t, f in lst.fields.items()})
            for target, lst in spec.lists.items()
        }

    def map(self, row: dict[str, Any]) -> Mapped:
        """Absent values are left out of the payload, as the portal contract expects."""
        out = Mapped({})
        for target, fn in self._fields.items():
            value = self._apply(fn, row, target, out.errors)
            if value is not None:
                out.payload[target] = value
        for target, (each, fns) in self._lists.items():
            items = []
            for n, child in enumerate(row.get(each) or []):
                item = {t: self._apply(fn, child, f"{target}[{n}].{t}", out.errors) for t, fn in fns.items()}
                items.append({t: v for t, v in item.items() if v is not None})
            out.payload[target] = items
        return out

    def subject(self, row: dict[str, Any]) -> dict[str, Any] | None:
        s = self.spec.subject
        if s is None:
            return None
        return {
            "personal_id": row.get(s.personal_id),
            "full_name": row.get(s.full_name),
            "date_of_birth": row.get(s.date_of_birth),
            "gender": row.get(s.gender),
        }

    @staticmethod
    def _apply(fn: Callable[[dict[str, Any]], Any], row: dict[str, Any], target: str,
               errors: list[dict[str, str]]) -> Any:
        try:
            return fn(row)
        except MappingError as exc:
            errors.append({"field": target, "rule": exc.rule, "message": f"{target} {exc}"})
            return None

    def _compile(self, target: str, f: FieldSpec) -> Callable[[dict[str, Any]], Any]:
        if f.const is not None:
            const = f.const
            return lambda row: const
        convert = self._converter(f)
        source, default = f.source, f.default

        def apply(row: dict[str, Any]) -> Any:
            value = row.get(source)
            if value is None or value == "":
                return default
            return convert(value)

        return apply

    def _converter(self, f: FieldSpec) -> Callable[[Any], Any]:
        steps: list[Callable[[Any], Any]] = []
        if f.transform == "text":
            steps.append(_text)
        elif f.transform == "name":
            steps.append(_name)
        elif f.transform == "int":
            steps.append(_int)
        elif f.transform == "datetime":
            steps.append(self._national_datetime)
        elif f.transform == "date":
            steps.append(lambda v: _parse(v).strftime("%Y%m%d"))
        if f.code_table:
            steps.append(self._code_lookup(f.code_table))

        def convert(value: Any) -> Any:
            for step in steps:
                value = step(value)
            return value

        return convert

    def _national_datetime(self, value: Any) -> str:
        moment = _parse(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self._source_tz)
        return moment.astimezone(NATIONAL_TZ).strftime("%Y%m%d%H%M%S")

    def _code_lookup(self, table_name: str) -> Callable[[Any], Any]:
        table = self.spec.code_tables[table_name]

        def lookup(value: Any) -> Any:
            try:
                return table[str(value)]
            except KeyError:
                raise MappingError(
                    f"unknown_{table_name}_code", f"code {str(value)[:50]!r} is not in code table {table_name!r}"
                ) from None

        return lookup
