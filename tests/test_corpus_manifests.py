"""Hostile and broken connector manifests (tests/corpus/manifests.yaml), checked as registration
checks them: each refused with the line and the field of the problem, quickly, and without
harming the registration of good manifests around it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from lienthong.registry import checks
from lienthong.registry.located import Invalid
from lienthong.registry.store import Registry
from lienthong.settings import PROJECT_ROOT, Settings
from lienthong.signing.keys import init_keys
from tests.corpus import load, params

CORPUS = load("manifests")
EXAMPLES = PROJECT_ROOT / "lienthong" / "registry" / "examples"
CONNECTIONS = ("lienthong_dossier_db", "lienthong_district_soap", "lienthong_commune_rest")


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> None:
    for conn_id in CONNECTIONS:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "generic", "host": "x"}))


def submitted(folder: Path, case: dict[str, Any]) -> Path:
    """The case's manifest in a folder of its own, next to copies of the examples' mappings."""
    folder.mkdir()
    for mapping in EXAMPLES.glob("*_dossier.yaml"):
        shutil.copy(mapping, folder)
    fill = case.get("fill")
    filled = (lambda text: text.replace("{fill}", fill["text"] * fill["times"])) if fill else (lambda text: text)
    if "text" in case:
        text = filled(case["text"])
    else:
        text = (EXAMPLES / case.get("example", "so-tu-phap.yaml")).read_text(encoding="utf-8")
        for old, new in case["edits"]:
            assert old in text, old
            text = text.replace(old, filled(new), 1)
    path = folder / "manifest.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def line_of(path: Path, where: int | str) -> int:
    if isinstance(where, int):
        return where
    text = path.read_text(encoding="utf-8", errors="surrogatepass")
    return next(n for n, line in enumerate(text.split("\n"), 1) if where in line)


@pytest.mark.parametrize("case", params(CORPUS))
def test_a_bad_manifest_is_refused_naming_line_and_field(case: dict[str, Any], tmp_path: Path, keys: Path) -> None:
    path = submitted(tmp_path / "submitted", case)
    with pytest.raises(Invalid) as caught:
        checks.submit(path, keys)
    prefix = f"{path}:{line_of(path, case['line'])}: "
    problems = str(caught.value).splitlines()
    assert any(p.startswith(prefix) and re.search(case["error"], p[len(prefix):]) for p in problems), \
        "\n".join(p[:200] for p in problems)


def test_bad_manifests_leave_good_ones_registered(home: Settings, tmp_path: Path) -> None:
    """Submissions are independent: refusals store nothing, good manifests around them go through."""
    init_keys(home.keys_dir)
    registry = Registry(home.state_db_url)
    refused = 0
    for n, case in enumerate(CORPUS["cases"]):
        if n % 10 == 0:  # a good one every ten bad ones
            registry.register(EXAMPLES / ("so-tu-phap.yaml", "huyen-soap.yaml", "xa-rest.yaml")[n // 10 % 3], "agency")
        with pytest.raises(Invalid):
            registry.register(submitted(tmp_path / case["id"], case), "agency")
        refused += 1
    assert refused == len(CORPUS["cases"])
    assert sorted(c["id"] for c in registry.list()) == ["so-tu-phap-nghe-an", "ubnd-huyen-quynh-luu",
                                                         "ubnd-xa-nghi-loc"]
