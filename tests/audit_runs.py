"""Runs built through the Ledger API for the audit tests: real SQL, real keys, no route needed."""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from lienthong.audit.ledger import ACKNOWLEDGED, PENDING, QUARANTINED, SUCCESS, Ledger
from lienthong.audit.manifest import Seal, Sealer, platform_sealer, stamp_or_none
from lienthong.connectors import connection
from lienthong.connectors.streams import Cursor
from lienthong.sandbox import services
from lienthong.settings import Settings

FACTS = {"connector": {"id": "so-tu-phap", "version": 1}, "mapping": {"name": "hoso", "version": 2, "hash": "ab" * 32},
         "schema": {"def": "HoSo", "hash": "cd" * 32}, "suite": {"file": "dossier_gate.suite.json", "hash": "ef" * 32}}


def outcome(key: str, kind: str) -> dict[str, Any]:
    acked = kind == ACKNOWLEDGED
    return {"record_key": key, "source_id": key.split("-")[-1], "source_hash": "0" * 64, "payload_hash": "1" * 64,
            "version": "v-" + key if kind != PENDING else None, "outcome": kind,
            "reasons": [{"field": "MaDoiTuong", "rule": "personal_id_birth_year",
                         "message": "MaDoiTuong 001090012345 does not match the birth year"}]
                       if kind == QUARANTINED else None,
            "signature": "eyJ.sig." + key if acked else None, "signer": "x5t" if acked else None,
            "ack_code": 0 if acked else None, "ack_status": "stored" if acked else None,
            "acked_at": dt.datetime(2026, 1, 2, 3, 4, 5, 678,
                                    tzinfo=dt.timezone(dt.timedelta(hours=7))) if acked else None}


def settle(ledger: Ledger, run_id: str, keys: Path, records: list[dict[str, Any]], seal: Any = None) -> None:
    ledger.start_run(run_id, "huyen__dossiers", "huyen__dossiers", run_id, None)
    counts = {"pulled": len(records),
              **{k: sum(r["outcome"] == k for r in records) for k in (ACKNOWLEDGED, QUARANTINED, PENDING)}}
    ledger.settle(run_id, records, SUCCESS, Cursor.of(dt.datetime(2026, 1, 1), len(records)), counts,
                  {"personal_id_birth_year": counts[QUARANTINED]}, facts=FACTS, seal=seal or platform_sealer(keys))


def three_runs(state_db_url: str, keys: Path) -> Ledger:
    """Three runs of one route: 5, 3 and 4 records, with every kind of outcome."""
    ledger = Ledger(state_db_url)
    kinds = [ACKNOWLEDGED, QUARANTINED, ACKNOWLEDGED, PENDING, ACKNOWLEDGED]
    settle(ledger, "run-1", keys, [outcome(f"H40-{i}", kinds[i]) for i in range(5)])
    settle(ledger, "run-2", keys, [outcome(f"H40-{i}", ACKNOWLEDGED) for i in (3, 5, 6)])
    settle(ledger, "run-3", keys, [outcome(f"H40-{i}", kinds[i - 7]) for i in range(7, 11)])
    return ledger


def short_lived_platform_seal(keys: Path) -> tuple[Sealer, dt.datetime]:
    """A sealer whose platform certificate expires a few seconds from now (time-stamped when a
    TSA is running), and when it expires: a ledger must outlive the certificates that signed it.
    The few seconds are for settling and stamping on a busy machine: a stamp after the expiry
    would rightly fail."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from lienthong.signing.cms import sign_detached
    from lienthong.signing.keys import PLATFORM_SUBJECT, certify

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = certify(keys, PLATFORM_SUBJECT, key.public_key(), valid_from=now - dt.timedelta(minutes=1),
                   valid_for=dt.timedelta(minutes=1, seconds=6))

    def seal(data: bytes) -> Seal:
        signature = sign_detached(data, key, [cert])
        return Seal(signature, stamp_or_none(signature))
    return seal, cert.not_valid_after_utc


def wait_until(moment: dt.datetime) -> None:
    time.sleep(max(0.0, (moment - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.5)


@contextmanager
def running_tsa(home: Path) -> Iterator[services.Sandbox]:
    """The sandbox TSA in its own process, its connection offered the way Airflow reads it."""
    with pytest.MonkeyPatch.context() as mp:
        s = Settings(home=home, state_db_url="unused")
        with services.Sandbox(s, {"tsa": 0}).start() as sandbox:
            mp.setenv(f"AIRFLOW_CONN_{connection.TSA.upper()}", json.dumps(sandbox.tsa_connection()))
            yield sandbox
