import logging

import pytest

from lienthong.logs import get_logger, mask_personal_ids


def test_twelve_digit_ids_are_masked_wherever_they_stand() -> None:
    assert mask_personal_ids("id 001190012345, next:079303000042.") == "id 001******345, next:079******042."
    assert mask_personal_ids("code 1234567890123 and 12345") == "code 1234567890123 and 12345"


def test_a_logger_masks_arguments_too(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("lienthong.test.masking")
    with caplog.at_level(logging.INFO, logger="lienthong.test.masking"):
        log.info("verifying %s for dossier %s", "001190012345", "STP-250101-0000001")
    assert caplog.messages == ["verifying 001******345 for dossier STP-250101-0000001"]
    assert get_logger("gates").name == "lienthong.gates"
