"""The gate with the real great-expectations suite from schemas/ and the personal-ID rules."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from lienthong.gates import gate
from lienthong.gates.personal_id import make_personal_id

SUITE = "dossier_gate.suite.json"
PID = make_personal_id("001", 1990, "F", 4242)


def _record(n: int, **changes: Any) -> dict[str, Any]:
    payload = {
        "MaHoSo": f"STP-250101-{n:07d}", "MaTTHC": "1.001193", "ChuHoSo": "Nguyễn Thị Lan", "LoaiDoiTuong": 1,
        "MaDoiTuong": PID, "NgayTiepNhan": "20250101080000", "NgayHenTra": "20250110080000",
        "TrangThaiHoSo": 4, "HinhThuc": 1, "DonViXuLy": "000.00.12.H40", "TaiLieuNop": [],
    }
    subject = {"personal_id": PID, "full_name": "Nguyễn Thị Lan", "date_of_birth": "1990-05-06", "gender": "F"}
    record = {"payload": payload, "errors": [], "subject": subject, "verification": {"status": "match", "fields": []}}
    for key, value in changes.items():
        target = record["subject"] if key in subject and key != "personal_id" else record
        if key in payload:
            target = payload
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return record


def _rules(verdict: gate.Verdict) -> set[str]:
    return {r["rule"] for r in verdict.reasons}


def test_each_kind_of_bad_record_is_quarantined_with_its_reasons_and_good_ones_pass() -> None:
    records = [
        _record(0),
        _record(1, NgayHenTra="20241231080000"),
        _record(2, date_of_birth="1991-05-06"),
        _record(3, gender="M"),
        _record(4, TrangThaiHoSo=None, errors=[{"field": "TrangThaiHoSo", "rule": "unknown_status_code",
                                             "message": "TrangThaiHoSo code 'X' is not in code table 'status'"}]),
        _record(5, verification={"status": "not_found", "fields": []}),
        _record(6, verification={"status": "mismatch", "fields": ["full_name"]}),
        _record(7, ChuHoSo=None, MaDoiTuong=None, subject={}, verification={"status": "invalid", "fields": []}),
        _record(8, verification={"status": "unavailable", "fields": []}),
        _record(9, MaTTHC="1.23", DonViXuLy="SO-TU-PHAP", NgayTiepNhan="2025-01-01"),
        _record(10),
    ]
    verdicts = gate.evaluate(records, SUITE)
    assert [v.status for v in verdicts] == ["pass"] + ["quarantine"] * 7 + ["pending", "quarantine", "pass"]
    assert _rules(verdicts[1]) == {"appointment_before_received"}
    assert _rules(verdicts[2]) == {"personal_id_birth_year"}
    assert _rules(verdicts[3]) == {"personal_id_gender"}
    assert _rules(verdicts[4]) == {"unknown_status_code", "missing_TrangThaiHoSo"}
    assert _rules(verdicts[5]) == {"citizen_not_found"}
    assert _rules(verdicts[6]) == {"citizen_mismatch_full_name"}
    assert _rules(verdicts[7]) == {"applicant_missing", "missing_ChuHoSo", "missing_MaDoiTuong"}
    assert _rules(verdicts[8]) == {"verification_unavailable"}
    assert _rules(verdicts[9]) == {"bad_procedure_code", "bad_agency_code", "bad_date_NgayTiepNhan"}
    for verdict in verdicts:
        for reason in verdict.reasons:
            assert reason["field"] and reason["message"].startswith(reason["field"])
            assert PID not in reason["message"] and "Lan" not in reason["message"]


def test_the_rows_each_failing_expectation_names_are_those_one_complete_validation_lists() -> None:
    """The gate lists rows only for the expectations the suite's first pass finds failing: what
    it attributes must be exactly what great-expectations lists when asked for every row at once."""
    import pandas as pd

    records = [_record(1), _record(1), _record(2, MaTTHC=None), _record(3, MaTTHC="1.23", ChuHoSo="x" * 300),
               _record(4, NgayHenTra="20241231080000", TrangThaiHoSo=99), _record(5, DonViXuLy=None)]
    suite = gate.suite_gate(SUITE)
    frame = pd.DataFrame.from_records([r["payload"] for r in records])
    complete = suite._batches.get_batch(batch_parameters={"dataframe": frame.reindex(columns=suite.columns)}).validate(
        suite.suite, result_format={"result_format": "COMPLETE"})
    listed = {(o.expectation_config.meta["rule"], int(row))
              for o in complete.results for row in o.result.get("unexpected_index_list") or []}
    attributed = {(r["rule"], row) for row, reasons in enumerate(suite.failures(frame)) for r in reasons}
    assert len({rule for rule, _ in listed}) >= 5
    assert attributed == listed


def test_duplicate_codes_in_one_batch_are_both_held() -> None:
    verdicts = gate.evaluate([_record(1), _record(1)], SUITE)
    assert all(_rules(v) == {"duplicate_MaHoSo"} for v in verdicts)


def test_a_batch_missing_a_whole_optional_column_still_runs() -> None:
    verdicts = gate.evaluate([_record(1, NgayHenTra=None), _record(2, NgayHenTra=None)], SUITE)
    assert [v.status for v in verdicts] == ["pass", "pass"]


def test_empty_batch() -> None:
    assert gate.evaluate([], SUITE) == []


# In a fresh interpreter, since this one may have imported the deferred modules already: our gate
# runs without them, and a suite naming an expectation that needs one still gets the real module.
_WITHOUT_UNUSED_MODULES = """
import json, sys
import pandas as pd
from lienthong.gates import gate

verdicts = gate.evaluate({records}, {suite!r})
loaded = {{name: type(sys.modules[name]).__name__ for name in ("scipy.stats", "altair")}}
import great_expectations as gx
batch = (gx.get_context(mode="ephemeral").data_sources.add_pandas("p").add_dataframe_asset("a")
         .add_batch_definition_whole_dataframe("b")
         .get_batch(batch_parameters={{"dataframe": pd.DataFrame({{"x": [0.5] * 50 + [1.5] * 50}})}}))
kl = [batch.validate(gx.expectations.ExpectColumnKLDivergenceToBeLessThan(
          column="x", partition_object={{"bins": [0, 1, 2], "weights": weights}}, threshold=0.1)).success
      for weights in ([0.5, 0.5], [0.9, 0.1])]
print(json.dumps({{"verdicts": [v.status for v in verdicts], "loaded": loaded, "kl": kl,
                  "then": type(sys.modules["scipy.stats"]).__name__}}))
"""


def test_the_gate_runs_without_the_modules_great_expectations_imports_for_other_expectations() -> None:
    records = [_record(1), _record(2, MaTTHC=None)]
    child = subprocess.run([sys.executable, "-c", _WITHOUT_UNUSED_MODULES.format(records=records, suite=SUITE)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    seen = json.loads(child.stdout.splitlines()[-1])
    assert seen["verdicts"] == ["pass", "quarantine"]
    assert seen["loaded"] == {"scipy.stats": "_Deferred", "altair": "_Deferred"}
    assert seen["kl"] == [True, False] and seen["then"] == "module"


def test_the_gate_does_not_fingerprint_its_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint labels a batch nothing looks up again; if great-expectations renames the
    size above which it skips it, this fails rather than the gate silently slowing down."""
    gate.suite_gate(SUITE)
    from great_expectations.execution_engine import pandas_execution_engine

    fingerprinted = []
    real = pandas_execution_engine.hash_pandas_dataframe
    monkeypatch.setattr(pandas_execution_engine, "hash_pandas_dataframe",
                        lambda frame: fingerprinted.append(len(frame)) or real(frame))
    verdicts = gate.evaluate([_record(1), _record(2, MaTTHC=None)], SUITE)
    assert [v.status for v in verdicts] == ["pass", "quarantine"]
    assert fingerprinted == []


def test_only_the_gate_task_loads_pandas() -> None:
    """Every task imports the stages; pandas (49 MB, 0.15 s) is the gate's alone, so the tasks
    that never judge a record (extract, verify, map, sign, push, account, record) must not pay for
    it, nor the sandbox's seeding, which makes personal IDs with the gate's rules."""
    probe = ("import sys; import lienthong.routes.stages, lienthong.sandbox.seed; "
             "print(sorted(m for m in ('pandas', 'great_expectations', 'lienthong.gates.gate') if m in sys.modules))")
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["[]"]
