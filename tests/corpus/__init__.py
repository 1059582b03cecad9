"""The hostile-input corpus: one YAML file per family of bad input, read by tests/test_corpus_*.py.

See README.md for how a case is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent


def load(family: str) -> dict[str, Any]:
    """The family's file. The pure-Python loader, because the C one refuses escapes such as
    ``"\\ud800"`` that the cases need to write hostile text down."""
    with open(HERE / f"{family}.yaml", encoding="utf-8") as handle:
        doc = yaml.load(handle, Loader=yaml.SafeLoader)
    ids = [case["id"] for case in doc["cases"]]
    assert len(ids) == len(set(ids)), f"{family}.yaml: case ids must be unique"
    return doc


def params(doc: dict[str, Any]) -> list[Any]:
    return [pytest.param(case, id=case["id"]) for case in doc["cases"]]


def repeated(value: Any) -> Any:
    """``{$repeat: TEXT, times: N}`` anywhere in a value, expanded."""
    if isinstance(value, dict):
        if "$repeat" in value:
            return value["$repeat"] * value["times"]
        return {key: repeated(item) for key, item in value.items()}
    if isinstance(value, list):
        return [repeated(item) for item in value]
    return value
