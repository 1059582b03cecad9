"""Applies a :class:`MappingSpec` to source rows, one record's errors never stopping the others.

A spec is compiled once into plain functions per field, so mapping costs a few dict look-ups per
field and record. A value that cannot be mapped (an unknown code, a malformed date, a value of the wrong type,
text that is not valid Unicode) becomes an error naming the target field and the rule; the record
goes on to the gate, which quarantines it with every reason it has. Nothing a source sends may
raise out of :meth:`MappingEngine.map`: one hostile row must never stop its batch.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable
from zoneinfo import ZoneInfo

from lienthong.connectors.values import MAX_SAFE_INTEGER
from lienthong.mappings.spec import FieldSpec, MappingSpec

NATIONAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")  # dates on the national side: yyyyMMddHHmmss, UTC+7
_SPACES = re.compile(r"\s+")
# C0 and C1 controls (tab, CR and LF are layout, kept) and the bidirectional overrides that make
# text read differently from what it holds (Trojan Source, CVE-2021-42574).
_CONTROLS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
# A lone surrogate, or the replacement character that a decoder (or connectors.values) put where
# the source sent something that was not Unicode: the text is damaged, whatever it was meant to say.
_DAMAGE = r"\ud800-\udfff\ufffd"
_NOT_UNICODE = re.compile(f"[{_DAMAGE}]")
# Either of the two, for one search of clean text (nearly all of it) instead of two. NFC neither
# makes nor removes these characters, so the raw text tells for the normalised text too.
_SUSPECT = re.compile(f"[{_CONTROLS}{_DAMAGE}]")
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
# National dates are 14-digit yyyyMMddHHmmss strings: a year outside these is a typo or garbage,
# and near the ends of the calendar the conversion to Vietnam time would overflow.
YEARS = (1900, 2199)


class MappingError(ValueError):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass
class Mapped:
    payload: dict[str, Any]
    errors: list[dict[str, str]] = field(default_factory=list)


def _text(value: Any) -> str:
    """Strings, and the integers and decimals that databases hand out for numeric codes."""
    if isinstance(value, bool) or not isinstance(value, (str, int, decimal.Decimal)):
        raise MappingError("not_text", f"is a {type(value).__name__}, not text")
    raw = str(value)
    if _SUSPECT.search(raw):
        if _NOT_UNICODE.search(raw):
            raise MappingError("invalid_unicode", "is not valid Unicode (the source sent bytes or a lone "
                                                  "surrogate that no character stands for)")
        raise MappingError("control_characters", "contains control characters")
    return unicodedata.normalize("NFC", raw).strip()


def _name(value: Any) -> str:
    words = _SPACES.split(_text(value))
    return " ".join(w[:1].upper() + w[1:].lower() for w in words if w)


def _int(value: Any) -> int:
    """Whole numbers only: ``int()`` alone would truncate 2.7, take True as 1 and overflow on inf;
    and only those JSON carries exactly, or the record could not be hashed and signed."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, decimal.Decimal) and value.is_finite() and value == value.to_integral_value():
        number = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None:
        raise MappingError("not_an_integer", "is not an integer")
    if abs(number) > MAX_SAFE_INTEGER:
        raise MappingError("not_an_integer", f"is beyond ±{MAX_SAFE_INTEGER}, the integers JSON carries exactly")
    return number


def _parse(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, (str, dt.date)) and not isinstance(value, bool):
        try:
            moment = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise MappingError("bad_datetime", "is not a date and time") from None
    else:
        raise MappingError("bad_datetime", f"is a {type(value).__name__}, not a date and time")
    if not YEARS[0] <= moment.year <= YEARS[1]:
        raise MappingError("date_out_of_range", f"year {moment.year} is outside {YEARS[0]} to {YEARS[1]}")
    return moment


def _date(value: Any) -> str:
    return _parse(value).strftime("%Y%m%d")


def _fill(fns: dict[str, Callable[[dict[str, Any]], Any]], row: dict[str, Any], prefix: str,
          errors: list[dict[str, str]]) -> dict[str, Any]:
    """The compiled fields ``fns`` applied to ``row``; a field that cannot be mapped is left out,
    its error (named ``prefix`` + target) appended to ``errors``. One loop for a record's fields
    and its list items alike, with no call per field beyond the field's own function."""
    out: dict[str, Any] = {}
    for target, fn in fns.items():
        try:
            value = fn(row)
        except MappingError as exc:
            name = prefix + target
            errors.append({"field": name, "rule": exc.rule, "message": f"{name} {exc}"})
            continue
        if value is not None:
            out[target] = value
    return out


class MappingEngine:
    def __init__(self, spec: MappingSpec) -> None:
        self.spec = spec
        self._source_tz = ZoneInfo(spec.source_timezone)
        self._fields = {target: self._compile(f) for target, f in spec.fields.items()}
        self._lists = {
            target: (lst.each, {t: self._compile(f) for t, f in lst.fields.items()})
            for target, lst in spec.lists.items()
        }

    def map(self, row: dict[str, Any]) -> Mapped:
        """Absent values are left out of the payload, as the portal contract expects."""
        errors: list[dict[str, str]] = []
        payload = _fill(self._fields, row, "", errors)
        for target, (each, fns) in self._lists.items():
            children = row.get(each) or []
            if not isinstance(children, (list, tuple)):
                errors.append({"field": target, "rule": "not_a_list",
                               "message": f"{target} is a {type(children).__name__}, not a list of records"})
                children = []
            items = []
            for n, child in enumerate(children):
                if not isinstance(child, dict):
                    errors.append({"field": f"{target}[{n}]", "rule": "not_a_record",
                                   "message": f"{target}[{n}] is a {type(child).__name__}, not a record"})
                    continue
                items.append(_fill(fns, child, f"{target}[{n}].", errors))
            payload[target] = items
        return Mapped(payload, errors)

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

    def _compile(self, f: FieldSpec) -> Callable[[dict[str, Any]], Any]:
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
        """The field's transform, then its code table, as one function: no loop over steps per value."""
        transform: Callable[[Any], Any] | None = {
            "text": _text, "name": _name, "int": _int, "datetime": self._national_datetime,
            "date": _date, None: None,
        }[f.transform]
        if not f.code_table:
            return transform or (lambda value: value)
        lookup = self._code_lookup(f.code_table)
        if transform is None:
            return lookup
        return lambda value: lookup(transform(value))

    def _national_datetime(self, value: Any) -> str:
        """A naive time from a source in national time is already national: attaching the zone
        (``replace``, ~1.6 µs) and converting to the same zone (a no-op) would change nothing."""
        moment = _parse(value)
        if moment.tzinfo is None and self._source_tz is not NATIONAL_TZ:
            moment = moment.replace(tzinfo=self._source_tz)
        if moment.tzinfo is not None:
            moment = moment.astimezone(NATIONAL_TZ)
        return moment.strftime("%Y%m%d%H%M%S")

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
