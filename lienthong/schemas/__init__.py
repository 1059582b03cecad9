"""The contracts, as files: payload schemas, the WSDL, the gate suites.

Kept in one folder so that a change of an external interface is one edit here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMAS_DIR = Path(__file__).resolve().parent


def path(name: str) -> Path:
    return SCHEMAS_DIR / name


def load_json(name: str) -> Any:
    return json.loads(path(name).read_text(encoding="utf-8"))
