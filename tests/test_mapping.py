
import pytest
import yaml
from pydantic import ValidationError

from lienthong.mappings.engine import MappingEngine
from lienthong.mappings.spec import MappingSpec, load
from lienthong.mappings.spec import MAPPINGS_DIR

ROW = {
    "id": 7, "code": "STP-250103-0000007", "procedure_code": "1.001193", "procedure_name": "Đăng ký khai sinh",
    "agency_code": "UBND_HUYEN_NGHI_LOC_CU", "status": "DANG_XU_LY.THAM_DINH", "channel": "online",
    "received_at": "2025-01-03T16:44:00.000000", "appointment_at": "2025-01-10T08:00:00.000000",
    "finished_at": None, "note": "", "applicant.full_name": "  nguyễn   thi\u0323 lan ",
    "applicant.personal_id": "001190012345",
    "documents": [{"file_name": "to-khai.pdf", "sha256": "ab" * 32, "digitised": 1}],
}


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(load(MAPPINGS_DIR / "dossier.yaml"))


def test_maps_renames_dates_codes_names_and_lists(engine: MappingEngine) -> None:
    mapped = engine.map(ROW)
    assert mapped.errors == []
    p = mapped.payload
    assert p["MaHoSo"] == "STP-250103-0000007"
    assert p["NgayTiepNhan"] == "20250103164400" and p["NgayHenTra"] == "20250110080000"
    assert p["TrangThaiHoSo"] == 4 and p["HinhThuc"] == 1 and p["LoaiDoiTuong"] == 1
    assert p["DonViXuLy"] == "000.31.30.H40"  # an abolished district maps to the unit that took over
    assert p["ChuHoSo"] == "Nguyễn Thị Lan"  # NFC, spaces collapsed, capitalised
    assert "NgayKetThucXuLy" not in p and "GhiChu" not in p  # absent values are left out
    assert p["TaiLieuNop"] == [{"TenTepDinhKem": "to-khai.pdf", "MaHashTep": "ab" * 32, "DuocSoHoa": 1}]


def test_source_in_another_timezone_is_converted_to_vietnam_time() -> None:
    raw = yaml.safe_load((MAPPINGS_DIR / "dossier.yaml").read_text())
    raw["source_timezone"] = "UTC"
    mapped = MappingEngine(MappingSpec.model_validate(raw)).map(ROW)
    assert mapped.payload["NgayTiepNhan"] == "20250103234400"


def test_unknown_codes_and_bad_values_are_per_record_errors(engine: MappingEngine) -> None:
    row = {**ROW, "status": "TRANG_THAI_LA", "agency_code": "PHONG_CU", "received_at": "hôm qua",
           "documents": [{"file_name": "a\x00b.pdf", "sha256": "cd", "digitised": "x"}]}
    mapped = engine.map(row)
    rules = {(e["field"], e["rule"]) for e in mapped.errors}
    assert rules == {
        ("TrangThaiHoSo", "unknown_status_code"), ("DonViXuLy", "unknown_agency_code"),
        ("NgayTiepNhan", "bad_datetime"), ("TaiLieuNop[0].TenTepDinhKem", "control_characters"),
        ("TaiLieuNop[0].DuocSoHoa", "not_an_integer"),
    }
    assert mapped.payload["MaHoSo"] == ROW["code"]  # the rest of the record is still mapped
    assert all(e["message"].startswith(e["field"]) for e in mapped.errors)
    assert engine.map(ROW).errors == []  # and the next record is unaffected


def test_subject_comes_from_the_spec(engine: MappingEngine) -> None:
    assert engine.subject(ROW)["personal_id"] == "001190012345"


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["fields"].update(X={"from": "a", "const": 1}), "exactly one of"),
    (lambda s: s["fields"]["TrangThaiHoSo"].update(code_table="nope"), "code table 'nope'"),
    (lambda s: s.update(key="Missing"), "not one of the mapped fields"),
    (lambda s: s["fields"]["MaHoSo"].update(transform="uppercase"), "transform"),
])
def test_bad_specs_are_refused_with_the_place(change, message: str) -> None:
    raw = yaml.safe_load((MAPPINGS_DIR / "dossier.yaml").read_text())
    change(raw)
    with pytest.raises(ValidationError, match=message):
        MappingSpec.model_validate(raw)
