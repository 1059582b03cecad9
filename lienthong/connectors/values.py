"""Row values as every source hands them on: JSON-safe, the same whatever the protocol."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any


def json_safe(value: Any) -> Any:
    """Row values as they travel through staging: dates as ISO text, decimals as text."""
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return value
