"""Realistic dossiers for the sandbox, with a known share deliberately broken in known ways.

Deterministic for a given seed, so a test can know, per dossier, which quarantine reason it must
end with. Every citizen a good dossier names is also registered in the population database
stand-in; the defects are made the way they happen in practice: a typo in a birth year or gender,
a citizen the registry does not know, a misspelt name, impossible dates, codes that fell out of
the code tables after a reorganisation, a dossier with no applicant.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass, field, replace
from typing import Sequence

from faker import Faker

from lienthong.gates.personal_id import PROVINCES, make_personal_id
from lienthong.sandbox.population import Citizen

# defect -> the quarantine rule that must name it (the gate may add others: every reason counts).
DEFECTS: dict[str, str] = {
    "id_birth_year": "personal_id_birth_year",
    "id_gender": "personal_id_gender",
    "unknown_citizen": "citizen_not_found",
    "name_mismatch": "citizen_mismatch_full_name",
    "appointment_before_received": "appointment_before_received",
    "unknown_status": "unknown_status_code",
    "unknown_agency": "unknown_agency_code",
    "missing_applicant": "applicant_missing",
}
BAD_SHARE = 0.03

PROCEDURES = [
    ("1.001193", "Đăng ký khai sinh", "HT", "Hộ tịch"),
    ("1.000894", "Đăng ký kết hôn", "HT", "Hộ tịch"),
    ("1.001022", "Đăng ký khai tử", "HT", "Hộ tịch"),
    ("2.001815", "Chứng thực bản sao từ bản chính giấy tờ, văn bản", "CT", "Chứng thực"),
    ("2.000528", "Cấp Phiếu lý lịch tư pháp cho công dân Việt Nam", "LLTP", "Lý lịch tư pháp"),
    ("1.009994", "Cấp giấy phép xây dựng mới đối với nhà ở riêng lẻ", "XD", "Xây dựng"),
    ("1.001612", "Đăng ký thành lập hộ kinh doanh", "HKD", "Thành lập và hoạt động của hộ kinh doanh"),
    ("1.003003", "Đăng ký biến động quyền sử dụng đất, quyền sở hữu tài sản gắn liền với đất", "DD", "Đất đai"),
]
# Internal unit codes of the provincial system; the mapping translates them to QCVN 102 codes.
AGENCIES = ["STP", "SXD", "STNMT", "SKHDT", "UBND_XA_HUNG_DUNG", "UBND_HUYEN_NGHI_LOC_CU"]
# Provincial statuses (with sub-statuses) and the share of dossiers in each.
STATUSES = [
    ("DA_TIEP_NHAN", 10), ("DANG_XU_LY", 20), ("DANG_XU_LY.THAM_DINH", 10),
    ("DANG_XU_LY.TRINH_KY", 5), ("CHO_BO_SUNG", 5), ("CHO_NGHIA_VU_TAI_CHINH", 3),
    ("KHONG_TIEP_NHAN", 2), ("RUT_HO_SO", 1), ("DUNG_XU_LY", 1), ("DA_XU_LY_XONG", 13),
    ("DA_TRA_KET_QUA", 30),
]
FEMALE_MIDDLE = ["Thị", "Thị", "Thị", "Ngọc", "Thu", "Thanh", "Minh", "Hồng"]
MALE_MIDDLE = ["Văn", "Văn", "Đức", "Minh", "Quang", "Hữu", "Công", "Xuân"]
HISTORIC_START = dt.datetime(2024, 1, 2, 7, 30)
# A fifth of the dossiers carry this updated_at, as after a bulk migration between systems: one
# value shared by hundreds of rows is what the (updated_at, id) cursor must get right.
MIGRATION_AT = dt.datetime(2025, 6, 30, 23, 0, 0)


@dataclass
class Applicant:
    id: int
    personal_id: str
    full_name: str
    date_of_birth: dt.date
    gender: str
    address: str
    phone: str
    email: str | None


@dataclass
class Dossier:
    id: int
    code: str
    procedure_code: str
    procedure_name: str
    field_code: str
    field_name: str
    agency_code: str
    applicant_id: int | None
    summary: str
    received_at: dt.datetime
    appointment_at: dt.datetime | None
    finished_at: dt.datetime | None
    returned_at: dt.datetime | None
    status: str
    channel: str
    note: str | None
    updated_at: dt.datetime
    defect: str | None
    documents: list[tuple] = field(default_factory=list)
    history: list[tuple] = field(default_factory=list)


@dataclass
class Seed:
    applicants: list[Applicant]
    dossiers: list[Dossier]
    citizens: list[Citizen]


def _ms(value: dt.datetime) -> dt.datetime:
    """Millisecond precision: what every ODBC driver in use stores and binds the same way."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


class _Maker:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.faker = Faker("vi_VN")
        self.faker.seed_instance(seed)

    def person(self, applicant_id: int) -> tuple[Applicant, Citizen]:
        rng = self.rng
        gender = rng.choice("MF")
        first = self.faker.first_name_female() if gender == "F" else self.faker.first_name_male()
        middle = rng.choice(FEMALE_MIDDLE if gender == "F" else MALE_MIDDLE)
        name = f"{self.faker.last_name()} {middle} {first}"
        born = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 66))
        pid = make_personal_id(rng.choice(list(PROVINCES)), born.year, gender,
                               applicant_id * 7919 + rng.randrange(7919))
        applicant = Applicant(
            id=applicant_id, personal_id=pid, full_name=name, date_of_birth=born, gender=gender,
            address=self.faker.address().replace("\n", ", "),
            phone=f"09{rng.randrange(10**8):08d}",
            email=f"nguoidan{applicant_id}@example.vn" if rng.random() < 0.4 else None,
        )
        return applicant, Citizen(pid, name, born, gender)


def generate(count: int, seed: int = 20250701, first_dossier_id: int = 1,
             first_applicant_id: int = 1, updated_at: dt.datetime | None = None,
             agencies: Sequence[str] = AGENCIES, code_prefix: str | None = None) -> Seed:
    """``count`` dossiers; ``updated_at`` given means "added now" (an incremental change).

    Another agency's system passes its own ``agencies`` (internal unit codes) and ``code_prefix``,
    so that dossiers of different systems never share a code at the portal.
    """
    maker = _Maker(seed * 1_000_003 + first_dossier_id)
    rng = maker.rng
    bad_count = round(count * BAD_SHARE)
    defect_names = list(DEFECTS)
    bad_positions = rng.sample(range(count), bad_count)
    defect_at = {pos: defect_names[i % len(defect_names)] for i, pos in enumerate(bad_positions)}
    statuses, weights = zip(*STATUSES)

    applicants: list[Applicant] = []
    citizens: list[Citizen] = []
    dossiers: list[Dossier] = []
    reusable: list[Applicant] = []  # applicants of good dossiers may come back with another one
    next_applicant = first_applicant_id
    doc_id = first_dossier_id * 10
    for pos in range(count):
        dossier_id = first_dossier_id + pos
        defect = defect_at.get(pos)
        applicant: Applicant | None
        if defect is None and reusable and rng.random() < 0.1:
            applicant = rng.choice(reusable)
        elif defect == "missing_applicant":
            applicant = None
        else:
            applicant, citizen = maker.person(next_applicant)
            next_applicant += 1
            applicants.append(applicant)
            if defect == "name_mismatch":  # the registry knows the person by another given name
                given = "Khánh" if not citizen.full_name.endswith("Khánh") else "Phúc"
                citizen = replace(citizen, full_name=f"{citizen.full_name.rsplit(' ', 1)[0]} {given}")
            if defect != "unknown_citizen":
                citizens.append(citizen)
            if defect == "id_birth_year":
                shift = rng.choice([-3, -2, -1, 1, 2, 3])
                applicant.date_of_birth = applicant.date_of_birth.replace(
                    year=applicant.date_of_birth.year + shift, day=min(applicant.date_of_birth.day, 28))
            elif defect == "id_gender":
                applicant.gender = "F" if applicant.gender == "M" else "M"
            elif defect is None:
                reusable.append(applicant)

        procedure = rng.choice(PROCEDURES)
        agency = "PHONG_CU_DA_GIAI_THE" if defect == "unknown_agency" else rng.choice(agencies)
        status = "TRANG_THAI_KHONG_RO" if defect == "unknown_status" else rng.choices(statuses, weights)[0]
        received = _ms(HISTORIC_START + dt.timedelta(minutes=rng.randrange(0, 540 * 24 * 60)))
        appointment = received + dt.timedelta(days=rng.randrange(3, 21), hours=rng.randrange(0, 8))
        if defect == "appointment_before_received":
            appointment = received - dt.timedelta(days=rng.randrange(1, 10))
        finished = returned = None
        if status in ("DA_XU_LY_XONG", "DA_TRA_KET_QUA"):
            finished = appointment - dt.timedelta(days=rng.randrange(0, 3))
            finished = max(finished, received + dt.timedelta(hours=4))
        if status == "DA_TRA_KET_QUA" and finished is not None:
            returned = finished + dt.timedelta(days=rng.randrange(0, 5))
        last_event = returned or finished or received + dt.timedelta(hours=rng.randrange(1, 72))
        if updated_at is not None:
            changed = updated_at
        elif rng.random() < 0.2:
            changed = MIGRATION_AT
        else:
            changed = min(last_event, MIGRATION_AT - dt.timedelta(seconds=1))
        code = f"{code_prefix or agency.split('_')[0]}-{received:%y%m%d}-{dossier_id:07d}"
        dossier = Dossier(
            id=dossier_id, code=code, procedure_code=procedure[0], procedure_name=procedure[1],
            field_code=procedure[2], field_name=procedure[3], agency_code=agency,
            applicant_id=applicant.id if applicant else None,
            summary=f"Hồ sơ {procedure[1].lower()}",
            received_at=received, appointment_at=_ms(appointment),
            finished_at=_ms(finished) if finished else None,
            returned_at=_ms(returned) if returned else None,
            status=status, channel="online" if rng.random() < 0.55 else "offline",
            note=None, updated_at=_ms(changed), defect=defect,
        )
        for n in range(rng.randrange(1, 4)):
            name = f"{dossier.code}_{n + 1}.pdf"
            dossier.documents.append((doc_id, dossier_id, name, hashlib.sha256(name.encode()).hexdigest(),
                                      int(rng.random() < 0.8)))
            doc_id += 1
        dossier.history.append((dossier_id * 10, dossier_id, "Cán bộ một cửa", "Chuyên viên",
                                "Bộ phận tiếp nhận và trả kết quả", received, "Tiếp nhận hồ sơ", "DA_TIEP_NHAN"))
        if status != "DA_TIEP_NHAN":
            dossier.history.append((dossier_id * 10 + 1, dossier_id, "Cán bộ chuyên môn", "Chuyên viên",
                                    "Phòng chuyên môn", max(received, changed - dt.timedelta(hours=1)),
                                    "Cập nhật tiến độ xử lý", status))
        dossiers.append(dossier)
    return Seed(applicants, dossiers, citizens)
