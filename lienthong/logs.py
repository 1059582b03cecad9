"""Logging that cannot leak personal data.

Every module logs through :func:`get_logger`, whose filter masks anything shaped like a
12-digit personal ID before the record reaches a handler (Airflow's task log, the console, a
file). Names and birth dates cannot be recognised by shape, so the rule for them is stronger:
code never passes them to a logger at all; log the dossier code instead.
"""

from __future__ import annotations

import logging
import re

_PERSONAL_ID = re.compile(r"(?<!\d)(\d{3})\d{6}(\d{3})(?!\d)")


def mask_personal_ids(text: str) -> str:
    """Keep the province prefix and last three digits, enough to tell records apart."""
    return _PERSONAL_ID.sub(r"\1******\2", text)


class PersonalDataFilter(logging.Filter):
    """Rewrites the formatted message so that arguments are masked too."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_personal_ids(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_FILTER = PersonalDataFilter()


def get_logger(name: str) -> logging.Logger:
    """A logger under ``lienthong`` with the masking filter attached.

    Logger-level filters do not apply to records propagated from child loggers, so the filter
    is attached to every logger handed out rather than once to the package logger.
    """
    logger = logging.getLogger(name if name.startswith("lienthong") else f"lienthong.{name}")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
