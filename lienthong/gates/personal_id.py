"""The structure of the 12-digit personal ID (số định danh cá nhân), as a checkable rule.

An ID is province of birth registration (3 digits) + century-and-gender digit + the last two
digits of the birth year + 6 digits. So an ID sent together with a birth date and a gender can be
checked against them before anyone asks the population database, and a typo in either is caught
at the gate with a reason that names the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a frame is checked: the sandbox's seeding makes IDs without it
    import pandas as pd

# The 63 province codes in use for birth registration before the 2025 merger.
PROVINCES: dict[str, str] = {
    "001": "Hà Nội", "002": "Hà Giang", "004": "Cao Bằng", "006": "Bắc Kạn", "008": "Tuyên Quang",
    "010": "Lào Cai", "011": "Điện Biên", "012": "Lai Châu", "014": "Sơn La", "015": "Yên Bái",
    "017": "Hòa Bình", "019": "Thái Nguyên", "020": "Lạng Sơn", "022": "Quảng Ninh",
    "024": "Bắc Giang", "025": "Phú Thọ", "026": "Vĩnh Phúc", "027": "Bắc Ninh", "030": "Hải Dương",
    "031": "Hải Phòng", "033": "Hưng Yên", "034": "Thái Bình", "035": "Hà Nam", "036": "Nam Định",
    "037": "Ninh Bình", "038": "Thanh Hóa", "040": "Nghệ An", "042": "Hà Tĩnh", "044": "Quảng Bình",
    "045": "Quảng Trị", "046": "Thừa Thiên Huế", "048": "Đà Nẵng", "049": "Quảng Nam",
    "051": "Quảng Ngãi", "052": "Bình Định", "054": "Phú Yên", "056": "Khánh Hòa",
    "058": "Ninh Thuận", "060": "Bình Thuận", "062": "Kon Tum", "064": "Gia Lai", "066": "Đắk Lắk",
    "067": "Đắk Nông", "068": "Lâm Đồng", "070": "Bình Phước", "072": "Tây Ninh", "074": "Bình Dương",
    "075": "Đồng Nai", "077": "Bà Rịa - Vũng Tàu", "079": "Hồ Chí Minh", "080": "Long An",
    "082": "Tiền Giang", "083": "Bến Tre", "084": "Trà Vinh", "086": "Vĩnh Long", "087": "Đồng Tháp",
    "089": "An Giang", "091": "Kiên Giang", "092": "Cần Thơ", "093": "Hậu Giang", "094": "Sóc Trăng",
    "095": "Bạc Liêu", "096": "Cà Mau",
}

FIRST_CENTURY = 1900  # digit 0/1 = 1900s male/female, 2/3 = 2000s, ... up to 8/9 = 2300s


def century_gender_digit(birth_year: int, gender: str) -> int:
    """The 4th digit of an ID for a birth year and gender ("M" or "F")."""
    century = (birth_year - FIRST_CENTURY) // 100
    if not 0 <= century <= 4:
        raise ValueError(f"birth year {birth_year} is outside the ID scheme")
    return 2 * century + (1 if gender == "F" else 0)


def make_personal_id(province: str, birth_year: int, gender: str, serial: int) -> str:
    if province not in PROVINCES:
        raise ValueError(f"unknown province code {province}")
    return f"{province}{century_gender_digit(birth_year, gender)}{birth_year % 100:02d}{serial % 1_000_000:06d}"


# Rule name -> (field, message). Messages never carry the values: they end up in quarantine
# reports and logs, where personal data must not.
RULES = {
    "personal_id_format": ("MaDoiTuong", "personal ID is not 12 digits"),
    "personal_id_province": ("MaDoiTuong", "personal ID starts with an unknown province code"),
    "personal_id_birth_year": ("MaDoiTuong", "personal ID does not match the applicant's birth year"),
    "personal_id_gender": ("MaDoiTuong", "personal ID does not match the applicant's gender"),
    "birth_date_invalid": ("MaDoiTuong", "the applicant's date of birth is not a real past date "
                                         "(YYYY-MM-DD, from 1900)"),
}


def check_frame(personal_id: pd.Series, birth_date: pd.Series, gender: pd.Series) -> pd.DataFrame:
    """One boolean column per rule, True where the row breaks it; vectorised over a batch.

    ``birth_date`` holds ISO dates (``YYYY-MM-DD``). Rows with no ID are left to the not-null
    checks of the suite: here they break nothing. Digits are ASCII only: ``\\d`` would let a
    full-width or Arabic-Indic digit through, and ``int()`` would read it as the same number.
    """
    import pandas as pd

    ids = personal_id.fillna("").astype(str)
    present = ids != ""
    well_formed = ids.str.fullmatch(r"[0-9]{12}")
    out = pd.DataFrame(index=personal_id.index)
    out["personal_id_format"] = present & ~well_formed
    checkable = present & well_formed
    out["personal_id_province"] = checkable & ~ids.str[:3].isin(PROVINCES.keys())

    digit = pd.to_numeric(ids.str[3].where(checkable), errors="coerce")
    year = pd.to_numeric(birth_date.fillna("").astype(str).str[:4], errors="coerce")
    has_year = checkable & year.notna()
    century_of_id = FIRST_CENTURY + (digit // 2) * 100
    id_year = century_of_id + pd.to_numeric(ids.str[4:6].where(checkable), errors="coerce")
    out["personal_id_birth_year"] = has_year & (id_year != year)

    sex = gender.fillna("").astype(str)
    has_gender = checkable & sex.isin(["M", "F"])
    female_digit = (digit % 2) == 1
    out["personal_id_gender"] = has_gender & (female_digit != (sex == "F"))

    dates = birth_date.fillna("").astype(str)
    iso = dates.str[:10].where(dates.str.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ].*)?"))
    born = pd.to_datetime(iso, format="%Y-%m-%d", errors="coerce")
    today = pd.Timestamp.now().normalize()
    out["birth_date_invalid"] = (dates != "") & (born.isna() | (born.dt.year < FIRST_CENTURY) | (born > today))
    return out
