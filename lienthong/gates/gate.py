"""The gate: one verdict per record, pass, quarantine (with every reason) or pending.

The great-expectations suite runs once per chunk of records over a DataFrame (vectorised), and
each expectation that fails there once more alone, for its rows; the personal-ID rules run once
per chunk too. Mapping errors and the population database's answer were attached by the earlier
stages. A record with any reason is quarantined; one that could not be verified only
because the population database was unavailable is pending, for the next run.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Sequence

import pandas as pd

from lienthong import schemas
from lienthong.gates import deferred_imports, personal_id
from lienthong.gates.verdicts import PASS, PENDING, QUARANTINE, Verdict
# What the population database says, as the reason a record is held back.
_SUBJECT_FIELD = {"full_name": "ChuHoSo", "date_of_birth": "MaDoiTuong", "gender": "MaDoiTuong"}
# Every failing row's index (COMPLETE), but not the query that would select those rows again:
# building it filters the whole DataFrame once more per expectation, a third of the row filtering.
_INDICES_ONLY = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
# Whether each expectation holds, and nothing about which rows break it.
_VERDICT_ONLY = {"result_format": "BOOLEAN_ONLY"}


class SuiteGate:
    """A great-expectations suite from ``schemas/``, run on an ephemeral context."""

    def __init__(self, suite_file: str) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        deferred_imports.defer()
        import great_expectations as gx  # 4 s to import: only ever inside a task
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.execution_engine import pandas_execution_engine

        # A batch's fingerprint, a hash of every cell, only labels a batch that nothing looks up
        # again here, and cost a tenth of each validation: great-expectations skips it above this
        # size, so no frame is below it.
        pandas_execution_engine.HASH_THRESHOLD = 0

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        spec = schemas.load_json(suite_file)
        self.suite = context.suites.add(gx.ExpectationSuite(**spec))
        asset = context.data_sources.add_pandas("gate").add_dataframe_asset("records")
        self._batches = asset.add_batch_definition_whole_dataframe("chunk")
        self.columns = sorted({
            column
            for e in spec["expectations"]
            for key in ("column", "column_A", "column_B")
            if (column := e["kwargs"].get(key))
        })

    def failures(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        """Per row (by position), the reasons the suite gives.

        Only the columns the suite names are handed over: great-expectations copies every column
        each time it filters rows for an expectation, so a column no expectation reads only costs
        time. A column the suite names but the records lack is added, empty.

        The whole suite is asked only whether each expectation holds; the rows are listed for the
        ones that fail, each validated again alone. Listing them (the failing values, then their
        indices) filters the rows twice more per expectation, and in a batch of 10,000 of the
        bench's dossiers 5 of the 33 expectations fail: 0.25 to 0.30 s of CPU a batch instead of
        0.38 to 0.41 s, the same reasons.
        """
        frame = frame.reindex(columns=self.columns).reset_index(drop=True)
        batch = self._batches.get_batch(batch_parameters={"dataframe": frame})
        reasons: list[list[dict[str, str]]] = [[] for _ in range(len(frame))]
        for verdict in batch.validate(self.suite, result_format=_VERDICT_ONLY).results:
            if _ran(verdict).success:
                continue
            config = verdict.expectation_config
            listed = _ran(batch.validate(config.to_domain_obj(), result_format=_INDICES_ONLY))
            rule, column = config.meta["rule"], config.meta["field"]
            message = f"{column}: {_describe(config.type, config.kwargs)}"
            for row in listed.result.get("unexpected_index_list") or []:
                reasons[int(row)].append({"field": column, "rule": rule, "message": message})
        return reasons


def _ran(outcome: Any) -> Any:
    """``outcome``, unless its expectation raised instead of judging: a gate that cannot judge
    must stop the run, not pass the records."""
    info = outcome.exception_info or {}
    if info.get("raised_exception"):
        raise RuntimeError(f"gate suite expectation {outcome.expectation_config.type} could not run: "
                           f"{info.get('exception_message')}")
    return outcome


def _describe(kind: str, kwargs: dict[str, Any]) -> str:
    if kind == "expect_column_values_to_not_be_null":
        return "is required"
    if kind == "expect_column_values_to_be_unique":
        return "appears more than once in the batch"
    if kind == "expect_column_value_lengths_to_be_between":
        return f"length must be between {kwargs.get('min_value')} and {kwargs.get('max_value')}"
    if kind == "expect_column_values_to_match_regex":
        return f"does not match {kwargs['regex']}"
    if kind == "expect_column_values_to_be_in_set":
        return f"must be one of {kwargs['value_set']}"
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return f"must not be earlier than {kwargs['column_B']}"
    return kind


@lru_cache(maxsize=4)
def suite_gate(suite_file: str) -> SuiteGate:
    return SuiteGate(suite_file)


def evaluate(records: Sequence[dict[str, Any]], suite_file: str) -> list[Verdict]:
    """Verdicts for mapped records (``payload``, ``errors``, ``subject``, ``verification``)."""
    if not records:
        return []
    frame = pd.DataFrame.from_records([r["payload"] for r in records])
    suite_reasons = suite_gate(suite_file).failures(frame)
    id_reasons = _personal_id_reasons(records)
    verdicts = []
    for record, from_suite, from_id in zip(records, suite_reasons, id_reasons, strict=True):
        reasons = list(record.get("errors") or []) + from_suite + from_id
        verification = record.get("verification")
        if verification is not None:
            reasons += _verification_reasons(record.get("subject") or {}, verification)
        if reasons:
            verdicts.append(Verdict(QUARANTINE, reasons))
        elif verification is not None and verification["status"] == "unavailable":
            verdicts.append(Verdict(PENDING, [{"field": "MaDoiTuong", "rule": "verification_unavailable",
                                               "message": "MaDoiTuong: population database did not answer; "
                                                          "retried next run"}]))
        else:
            verdicts.append(Verdict(PASS))
    return verdicts


def _personal_id_reasons(records: Sequence[dict[str, Any]]) -> list[list[dict[str, str]]]:
    """Per row (by position), the personal-ID rules its subject breaks, in the rules' order.

    The rules' flags are read once as one boolean array: picking each record's row out of the
    DataFrame (``iloc``) cost ~17 µs a record, more than all the rules themselves.
    """
    subjects = pd.DataFrame.from_records([r.get("subject") or {} for r in records],
                                         columns=["personal_id", "full_name", "date_of_birth", "gender"])
    broken = personal_id.check_frame(subjects["personal_id"], subjects["date_of_birth"], subjects["gender"])
    rules = list(broken.columns)
    reasons: list[list[dict[str, str]]] = [[] for _ in range(len(broken))]
    for row, column in zip(*broken.to_numpy(dtype=bool).nonzero()):
        field_name, message = personal_id.RULES[rules[column]]
        reasons[row].append({"field": field_name, "rule": rules[column], "message": f"{field_name}: {message}"})
    return reasons


def _verification_reasons(subject: dict[str, Any], verification: dict[str, Any]) -> list[dict[str, str]]:
    status = verification["status"]
    if status == "not_found":
        return [{"field": "MaDoiTuong", "rule": "citizen_not_found",
                 "message": "MaDoiTuong: no citizen with this personal ID in the population database"}]
    if status == "mismatch":
        return [{"field": _SUBJECT_FIELD.get(f, f), "rule": f"citizen_mismatch_{f}",
                 "message": f"{_SUBJECT_FIELD.get(f, f)}: {f.replace('_', ' ')} differs from the population database"}
                for f in verification.get("fields") or []]
    if status == "invalid":
        if not subject.get("personal_id") and not subject.get("full_name"):
            return [{"field": "ChuHoSo", "rule": "applicant_missing",
                     "message": "ChuHoSo: the dossier has no applicant"}]
        return [{"field": "MaDoiTuong", "rule": "citizen_data_invalid",
                 "message": "MaDoiTuong: applicant data incomplete or malformed, cannot be verified"}]
    return []
