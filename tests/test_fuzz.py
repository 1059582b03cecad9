"""Fuzzing the two parsers of input we do not control: the mapping engine (source rows) and the
manifest parser (agencies' YAML), and the fast canonical encoder against the reference one. A
failure hypothesis finds is kept as a case in tests/corpus/."""

from __future__ import annotations

import copy
import datetime as dt
import os
import string
from typing import Any

import orjson
import pytest
import rfc8785
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lienthong.connectors.values import json_safe
from lienthong.mappings.engine import MappingEngine
from lienthong.mappings.spec import MAPPINGS_DIR, load
from lienthong.registry import manifest as mf
from lienthong.registry.located import Invalid, YamlDoc
from lienthong.settings import PROJECT_ROOT
from lienthong.signing.canonical import canonical_json

ENGINE = MappingEngine(load(MAPPINGS_DIR / "dossier.yaml"))
COLUMNS = sorted({f.source for f in ENGINE.spec.fields.values() if f.source})
DOC_COLUMNS = sorted({f.source for lst in ENGINE.spec.lists.values() for f in lst.fields.values() if f.source})
EXAMPLE = (PROJECT_ROOT / "lienthong" / "registry" / "examples" / "so-tu-phap.yaml").read_text(encoding="utf-8")
# The test command's run is repeatable (derandomize: the same examples every time, so CI never fails
# on luck); LIENTHONG_FUZZ_EXAMPLES=5000 searches afresh, and what it finds becomes a corpus case.
FAST = settings(max_examples=int(os.environ.get("LIENTHONG_FUZZ_EXAMPLES") or 150),
                derandomize="LIENTHONG_FUZZ_EXAMPLES" not in os.environ, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(max_size=8),
                    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),
                    st.sampled_from(["2025-02-30", "9999-12-31T23:59:59+00:00", "0001-01-01", "DANG_XU_LY", "inf"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3), max_leaves=6)
documents = st.lists(st.dictionaries(st.sampled_from(DOC_COLUMNS), values, max_size=3), max_size=3)
hostile_rows = st.fixed_dictionaries({}, optional={**{c: values for c in COLUMNS}, "documents": values | documents})

valid_rows = st.fixed_dictionaries({
    "code": st.from_regex(r"STP-[0-9]{6}-[0-9]{7}", fullmatch=True),
    "procedure_code": st.from_regex(r"[12]\.[0-9]{6}", fullmatch=True),
    "applicant.full_name": st.text(alphabet="aăâbcdđeêghiklmnoôơpqrstuưvxyàáảãạ ", min_size=1, max_size=40),
    "applicant.personal_id": st.from_regex(r"0[0-9]{11}", fullmatch=True),
    "received_at": st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1))
                     .map(lambda d: d.isoformat()),
    "status": st.sampled_from(sorted(ENGINE.spec.code_tables["status"])),
    "channel": st.sampled_from(["online", "offline"]),
    "agency_code": st.sampled_from(sorted(ENGINE.spec.code_tables["agency"])),
    "documents": st.lists(st.fixed_dictionaries({"file_name": st.text(string.ascii_letters, min_size=1, max_size=9),
                                                 "sha256": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
                                                 "digitised": st.sampled_from([0, 1, "0", "1"])}), max_size=3),
})


def as_sources_hand_it(row: dict[str, Any]) -> dict[str, Any]:
    """What every source does to a row before staging (connectors.sources.flatten)."""
    return {key: json_safe(value) for key, value in row.items()}


@FAST
@given(hostile_rows)
def test_the_engine_maps_any_row_without_raising_and_the_result_can_be_staged_and_signed(row: dict[str, Any]) -> None:
    mapped = ENGINE.map(as_sources_hand_it(row))
    for error in mapped.errors:
        assert set(error) == {"field", "rule", "message"} and error["message"].startswith(error["field"])
    orjson.dumps({"payload": mapped.payload, "errors": mapped.errors})  # the map stage's staging
    canonical_json(mapped.payload)  # what the sign stage hashes and signs


@FAST
@given(valid_rows)
def test_a_valid_row_maps_without_errors_and_deterministically(row: dict[str, Any]) -> None:
    first = ENGINE.map(copy.deepcopy(row))
    assert first.errors == []
    assert ENGINE.map(row).payload == first.payload == MappingEngine(ENGINE.spec).map(row).payload
    assert first.payload["MaHoSo"] == row["code"] and len(first.payload["TaiLieuNop"]) == len(row["documents"])


def _check_manifest(text: str) -> None:
    lines = text.count("\n") + 2
    try:
        mf.parse(YamlDoc.parse("m.yaml", text))
    except Invalid as exc:
        assert exc.problems and all(1 <= p.line <= lines and p.message for p in exc.problems), exc.problems


@FAST
@given(st.text(max_size=300))
def test_the_manifest_parser_refuses_any_text_with_located_problems_only(text: str) -> None:
    _check_manifest(text)


@FAST
@given(st.lists(st.tuples(st.integers(0, EXAMPLE.count("\n")), st.text(max_size=40)), min_size=1, max_size=4))
def test_the_manifest_parser_refuses_any_edit_of_a_good_manifest_with_located_problems_only(
        edits: list[tuple[int, str]]) -> None:
    lines = EXAMPLE.split("\n")
    for number, text in edits:
        lines[number] = text
    _check_manifest("\n".join(lines))


yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["name", "table", "columns", "streams", "agency", "x"]),
                                             inner, max_size=3), max_leaves=10)


@FAST
@given(st.dictionaries(st.sampled_from(sorted(mf.Manifest.model_fields) + ["other"]), yaml_values, max_size=8))
def test_the_manifest_parser_refuses_any_structure_with_located_problems_only(data: dict[str, Any]) -> None:
    _check_manifest(yaml.safe_dump(data, allow_unicode=True))


# Keys mostly ASCII (what records have, so the fast encoder is the one tested), sometimes not.
json_keys = st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=6) | st.text(max_size=4)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60), st.floats(allow_nan=False), st.text()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=5), max_leaves=12)


@settings(FAST, max_examples=FAST.max_examples * 3)
@given(json_values)
def test_the_canonical_encoder_writes_the_reference_rfc8785_bytes_or_its_error(value: Any) -> None:
    try:
        expected: bytes | type[Exception] = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        expected = type(exc)
    try:
        got: bytes | type[Exception] = canonical_json(value)
    except rfc8785.CanonicalizationError as exc:
        got = type(exc)
    assert got == expected


@pytest.mark.parametrize("depth", [253, 254, 255, 400])
def test_the_canonical_encoder_writes_the_reference_bytes_however_deep_the_nesting(depth: int) -> None:
    """Around orjson's limit of 254 arrays one inside another, and beyond it, where the reference
    encoder takes over."""
    value: Any = {"a": "b"}
    for _ in range(depth):
        value = [value, 1]
    assert canonical_json(value) == rfc8785.dumps(value)


def test_a_value_that_contains_itself_is_refused_not_walked_forever() -> None:
    looped: list[Any] = ["a"]
    looped.append({"again": looped})
    with pytest.raises(RecursionError):
        canonical_json(looped)
