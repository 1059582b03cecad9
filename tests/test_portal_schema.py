"""The portal's schema check answers "valid" with a compiled validator (jsonschema-rs) and asks
jsonschema only about a record it finds invalid: the two must never disagree on a record
jsonschema refuses, and the messages must stay jsonschema's. Records go through orjson first,
as the portal receives them."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lienthong.sandbox.portal import PAYLOAD_INVALID, SchemaCheck, _validator, schema_errors
from lienthong.signing.jws import Signer
from lienthong.signing.records import seal
from tests.test_corpus_signatures import CORPUS, Keys, build_keys, forge
from tests.test_portal_rest import dossier, progress

Record = dict[str, Any]


def received(record: Any) -> Any:
    return orjson.loads(orjson.dumps(record))


def assert_agree(check: SchemaCheck, record: Any) -> list[str]:
    """The compiled verdict equals jsonschema's, and there are messages exactly when it is "invalid"."""
    detailed = check.detailed.is_valid(record)
    assert check.fast.is_valid(record) == detailed
    errors = schema_errors(check, record)
    assert (errors == []) == detailed
    return errors


@pytest.fixture(scope="module")
def forger(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return build_keys(keys, tmp_path_factory.mktemp("forger"))


def test_the_signature_corpus_is_judged_alike(forger: Keys) -> None:
    check = _validator("HoSo")
    verdicts = []
    for i, case in enumerate(CORPUS["cases"]):
        earlier, tail = forge(forger, case, 100 + 10 * i)
        for record in [*(r for batch in earlier for r in batch), *tail]:
            verdicts.append((case["id"], assert_agree(check, received(record))))
    refused = sorted(case for case, errors in verdicts if errors)
    assert refused == sorted(case["id"] for case in CORPUS["cases"] if case["code"] == PAYLOAD_INVALID)
    assert len(verdicts) > len(CORPUS["cases"])  # the replays' earlier batches too


def _document(**changes: Any) -> Record:
    return {**dossier(1)["TaiLieuNop"][0], **changes}


def _without(record: Record, field: str) -> Record:
    return {k: v for k, v in record.items() if k != field}


INVALID_DOSSIERS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("missing_required", {"drop": "ChuHoSo"}, ["/ChuHoSo: required"]),
    ("wrong_pattern", {"MaTTHC": "1.1"}, ["/MaTTHC: must satisfy pattern ^[12]\\.\\d{6}$"]),
    ("extra_property", {"TruongLa": "?"}, ["/TruongLa: not allowed"]),
    ("wrong_type", {"LoaiDoiTuong": "1"}, ["/LoaiDoiTuong: must satisfy enum [1, 2]",
                                           "/LoaiDoiTuong: must satisfy type integer"]),
    ("boolean_is_no_integer", {"HinhThuc": True}, ["/HinhThuc: must satisfy enum [0, 1]",
                                                   "/HinhThuc: must satisfy type integer"]),
    ("null_for_a_required_text", {"MaDoiTuong": None}, ['/MaDoiTuong: must satisfy type string']),
    ("too_long", {"ChuHoSo": "Nguyễn " * 40}, ["/ChuHoSo: must satisfy maxLength 200"]),
    ("nested_item_wrong_pattern", {"TaiLieuNop": [_document(MaHashTep="not-a-hash")]},
     ["/TaiLieuNop/0/MaHashTep: must satisfy pattern ^[0-9a-f]{64}$"]),
    ("nested_item_missing_and_extra", {"TaiLieuNop": [_document(), {**_without(_document(), "DuocSoHoa"), "Size": 1}]},
     ["/TaiLieuNop/1/DuocSoHoa: required", "/TaiLieuNop/1/Size: not allowed"]),
    ("nested_item_not_an_object", {"DanhSachLePhi": [{}, "50000"]},
     ['/DanhSachLePhi/1: must satisfy type object']),
]


@pytest.mark.parametrize("changes, expected", [pytest.param(c, e, id=i) for i, c, e in INVALID_DOSSIERS])
def test_an_invalid_dossier_is_refused_alike_with_jsonschemas_messages(
    signer: Signer, changes: dict[str, Any], expected: list[str]
) -> None:
    sealed = seal(dossier(1), signer)
    drop = changes.pop("drop", None)
    record = received({**(_without(sealed, drop) if drop else sealed), **changes})

    assert assert_agree(_validator("HoSo"), record) == expected


@pytest.mark.parametrize("record", ["a dossier", None, [], 1])
def test_a_record_that_is_no_object_is_refused_alike(record: Any) -> None:
    assert assert_agree(_validator("HoSo"), record) == ['/: must satisfy type object']


def test_progress_entries_and_envelopes_are_judged_alike(signer: Signer) -> None:
    entry = received(seal(progress(1), signer))
    assert assert_agree(_validator("TienDoHoSo"), entry) == []
    assert assert_agree(_validator("TienDoHoSo"), {**entry, "TrangThai": 11}) == ["/TrangThai: must satisfy maximum 10"]
    assert assert_agree(_validator("TienDoHoSo"), received(seal(dossier(1), signer)))[0] == "/ChuHoSo: not allowed"
    envelope = {"session": "s", "service": "TraCuuHoSo", "data": [{"MaHoSo": "H12"}, {"MaHoSo": ""}]}
    assert assert_agree(_validator("TraCuuHoSo"), envelope) == ["/data/1/MaHoSo: must satisfy minLength 1"]


def test_where_the_compiled_validator_is_stricter_jsonschema_decides(signer: Signer) -> None:
    """Rust's \\d is ASCII and its $ ends the text; Python's \\d is any decimal digit and its $ also
    matches before a final newline. The compiled "invalid" is only a cue to ask jsonschema."""
    sealed = received(seal(dossier(1), signer))
    check = _validator("HoSo")
    for record in [{**sealed, "NgayTiepNhan": "٢٠٢٥٠١٠١٠٨٣٠٠٠"}, {**sealed, "MaTTHC": "1.001612\n"}]:
        assert not check.fast.is_valid(record) and check.detailed.is_valid(record)
        assert schema_errors(check, record) == []


# Any JSON value (as orjson reads it: 64-bit integers, no lone surrogates) in place of a field.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
    | st.from_regex(r"[0-9a-f]{64}|[12]\.\d{6}|\d{14}", fullmatch=True),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=6)
FIELDS = sorted(dossier(1)) + ["PhienBan", "ChuKySo", "DuocSoHoa", "MaHashTep", "TenTepDinhKem", "Khac"]


@settings(max_examples=int(os.environ.get("LIENTHONG_FUZZ_EXAMPLES") or 150),
          derandomize="LIENTHONG_FUZZ_EXAMPLES" not in os.environ, deadline=None, database=None)
@given(changes=st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=3),
       in_document=st.booleans())
def test_the_compiled_validator_never_passes_what_jsonschema_refuses(changes: dict[str, Any],
                                                                     in_document: bool) -> None:
    record = dossier(1, PhienBan="0" * 64, ChuKySo="e30..c2ln")
    target = record["TaiLieuNop"][0] if in_document else record
    target.update(copy.deepcopy(changes))
    record = received(record)
    check = _validator("HoSo")
    detailed = check.detailed.is_valid(record)
    assert detailed or not check.fast.is_valid(record)
    assert (schema_errors(check, record) == []) == detailed
