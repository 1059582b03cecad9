"""Row values as every source hands them on: JSON-safe, the same whatever the protocol."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from typing import Any

_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Integers JSON carries exactly (RFC 8785 refuses others, orjson stops at 64 bits).
MAX_SAFE_INTEGER = 2**53 - 1


def json_safe(value: Any) -> Any:
    """Row values as they travel through staging: dates as ISO text, decimals as text.

    Staging and hashing need valid JSON, and one hostile value must not stop a batch: a lone
    surrogate (a ``\\ud800`` escape in a JSON answer) becomes U+FFFD, and a non-finite number or an
    integer beyond what JSON carries exactly its text, which the mapping engine then refuses where
    it expects a number, for that record alone.
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        return str(value)
    if isinstance(value, dict):
        return {json_safe(str(key)): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return value
