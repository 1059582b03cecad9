import pandas as pd
import pytest

from lienthong.gates.personal_id import PROVINCES, century_gender_digit, check_frame, make_personal_id


def test_sixty_three_province_codes() -> None:
    assert len(PROVINCES) == 63
    assert PROVINCES["001"] == "Hà Nội" and PROVINCES["096"] == "Cà Mau"


@pytest.mark.parametrize(("year", "gender", "digit"),
                         [(1985, "M", 0), (1985, "F", 1), (2003, "M", 2), (2003, "F", 3), (2101, "F", 5)])
def test_century_and_gender_digit(year: int, gender: str, digit: int) -> None:
    assert century_gender_digit(year, gender) == digit


def test_make_personal_id_layout() -> None:
    assert make_personal_id("079", 2003, "F", 42) == "079303000042"
    with pytest.raises(ValueError):
        make_personal_id("003", 1990, "M", 1)


def test_check_frame_flags_each_rule_only_where_broken() -> None:
    good = make_personal_id("001", 1990, "F", 12345)
    frame = check_frame(
        pd.Series([good, good, good, "12345", None, "999190012345"]),
        pd.Series(["1990-02-03", "1991-02-03", "1990-02-03", "1990-02-03", None, "1990-02-03"]),
        pd.Series(["F", "F", "M", "F", None, "F"]),
    )
    assert frame.to_dict("list") == {
        "personal_id_format": [False, False, False, True, False, False],
        "personal_id_province": [False, False, False, False, False, True],
        "personal_id_birth_year": [False, True, False, False, False, False],
        "personal_id_gender": [False, False, True, False, False, False],
        "birth_date_invalid": [False] * 6,
    }
