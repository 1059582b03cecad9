"""The portal stand-in and the REST sink, over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from lienthong.connectors.rest import Ack, PortalError, PortalSink, PortalUnavailable
from lienthong.sandbox.faults import FaultConfig
from lienthong.sandbox.http import ServerThread, free_port
from lienthong.sandbox.portal import create_app, sandbox_stats
from lienthong.signing.jws import Signer
from lienthong.signing.keys import init_keys, load_signer
from lienthong.signing.records import seal, unseal
from tests.sealing import sealed_as_given
from lienthong.signing.trust import TrustStore

USERNAME, PASSWORD = "lgsp", "mat-khau-sandbox"


def dossier(n: int, **changes: Any) -> dict[str, Any]:
    """A dossier valid against $defs/HoSo once sealed."""
    return {
        "MaHoSo": f"H12.99-250101-{n:06d}",
        "MaTTHC": "1.001612",
        "TenTTHC": "Đăng ký khai sinh",
        "MaLinhVuc": "HOTICH",
        "TenLinhVuc": "Hộ tịch",
        "ChuHoSo": "Nguyễn Văn An",
        "LoaiDoiTuong": 1,
        "MaDoiTuong": "001090012345",
        "ThongTinKhac": None,
        "Email": None,
        "Fax": None,
        "SoDienThoai": "0912345678",
        "TrichYeuHoSo": "Đăng ký khai sinh cho con",
        "NgayTiepNhan": "20250101083000",
        "NgayHenTra": "20250105170000",
        "NgayTra": None,
        "NgayKetThucXuLy": None,
        "TrangThaiHoSo": 2,
        "ThongTinTra": None,
        "HinhThuc": 1,
        "DonViXuLy": "000.00.01.H12",
        "GhiChu": None,
        "TaiLieuNop": [{"TenTepDinhKem": "to_khai.pdf", "MaHashTep": hashlib.sha256(b"%d" % n).hexdigest(),
                        "DuocSoHoa": 1}],
        "DanhSachLePhi": [],
        "DanhSachTepDinhKemKhac": [],
        "DanhSachHoSoBoSung": [],
        "DanhSachGiayToKetQua": [],
        **changes,
    }


@contextmanager
def portal(db: Path, trust: TrustStore, **options: Any) -> Iterator[ServerThread]:
    with ServerThread(create_app(db, trust, {USERNAME: PASSWORD}, **options)) as server:
        yield server


@pytest.fixture
def server(tmp_path: Path, trust: TrustStore) -> Iterator[ServerThread]:
    with portal(tmp_path / "portal.db", trust) as running:
        yield running


def sink_for(url: str, **options: Any) -> PortalSink:
    """Short backoff so that retry tests stay fast; the policy is the same."""
    return PortalSink(url, USERNAME, PASSWORD, **{"backoff_initial": 0.01, "backoff_max": 0.05, **options})


def codes(acks: list[Ack]) -> list[int]:
    return [ack.error_code for ack in acks]


def test_push_stores_sealed_records_and_a_resend_is_all_duplicates(server: ServerThread, signer: Signer) -> None:
    batch = [seal(dossier(n), signer) for n in range(1, 6)]

    with sink_for(server.url) as sink:
        acks = sink.push(batch)
        assert [(a.MaHoSo, a.PhienBan) for a in acks] == [(r["MaHoSo"], r["PhienBan"]) for r in batch]
        assert codes(acks) == [0] * 5 and {a.status for a in acks} == {"stored"}
        assert all(a.acknowledged for a in acks)
        assert sandbox_stats(server.url) == {"dossiers": 5, "versions": 5, "received": 5, "duplicates": 0,
                                             "rejected": 0, "progress": 0}

        again = sink.push(batch)

    assert codes(again) == [1] * 5 and all(a.acknowledged and a.status == "duplicate" for a in again)
    stats = sandbox_stats(server.url)
    assert (stats["dossiers"], stats["versions"], stats["duplicates"]) == (5, 5, 5)


@pytest.mark.parametrize("judges", [0, 2], ids=["in-thread", "two-worker-processes"])
def test_each_record_of_a_batch_is_judged_on_its_own(
    tmp_path: Path, signer: Signer, trust: TrustStore, judges: int
) -> None:
    init_keys(tmp_path / "stranger")
    stranger = load_signer(tmp_path / "stranger")
    wrong_version = {**dossier(5), "PhienBan": "0" * 64}
    bad_hash = dossier(4)["TaiLieuNop"][0] | {"MaHashTep": "not-a-hash"}
    batch = [
        seal(dossier(1), signer),
        {**seal(dossier(2), signer), "TrangThaiHoSo": 9},  # changed after sealing
        seal(dossier(3), stranger),
        seal(dossier(4, MaTTHC="1.1", TaiLieuNop=[bad_hash]), signer),
        sealed_as_given(wrong_version, signer),
        seal(dossier(6), signer),
    ]

    with portal(tmp_path / "portal.db", trust, judges=judges) as server, sink_for(server.url) as sink:
        acks = sink.push(batch)
        stats = sandbox_stats(server.url)

    assert codes(acks) == [0, 10, 11, 12, 13, 0]
    assert [a.status for a in acks[1:5]] == ["signature_invalid", "certificate_untrusted", "payload_invalid",
                                             "version_mismatch"]
    assert "/MaTTHC" in acks[3].message and "/TaiLieuNop/0/MaHashTep" in acks[3].message
    assert [a.acknowledged for a in acks] == [True, False, False, False, False, True]
    assert stats == {"dossiers": 2, "versions": 2, "received": 6, "duplicates": 0, "rejected": 4, "progress": 0}


def progress(n: int, **changes: Any) -> dict[str, Any]:
    """A progress entry valid against $defs/TienDoHoSo once sealed."""
    return {"MaHoSo": f"H12.99-250101-{n:06d}", "NguoiXuLy": "Cán bộ một cửa", "ChucDanh": "Chuyên viên",
            "ThoiDiemXuLy": "20250102090000", "PhongBanXuLy": "Bộ phận một cửa", "NoiDungXuLy": "Tiếp nhận",
            "TrangThai": 2, "NgayBatDau": "20250101083000", "NgayKetThucTheoQuyDinh": None, **changes}


def test_progress_entries_are_kept_apart_from_dossiers_once_each_and_checked_like_them(
    server: ServerThread, signer: Signer
) -> None:
    # The first entry names a dossier the portal does not hold: the routes run on their own
    # schedules, so progress may arrive first.
    batch = [seal(progress(1), signer), seal(progress(1, ThoiDiemXuLy="20250103090000", TrangThai=4), signer),
             {**seal(progress(2), signer), "TrangThai": 9}, seal(progress(3, TrangThai=11), signer)]
    with sink_for(server.url) as sink:
        acks = sink.push(batch, service="CapNhatTienDoHoSoMC")
        again = sink.push(batch[:2], service="CapNhatTienDoHoSoMC")
        [wrong] = sink.push([seal(dossier(1), signer)], service="CapNhatTienDoHoSoMC")

    assert wrong.error_code == 12 and "/ChuHoSo: not allowed" in wrong.message  # a dossier is no progress entry

    assert codes(acks) == [0, 0, 10, 12] and "/TrangThai" in acks[3].message
    assert [a.status for a in again] == ["duplicate", "duplicate"]
    stats = sandbox_stats(server.url)
    assert (stats["progress"], stats["dossiers"], stats["versions"]) == (2, 0, 0)


def test_schema_errors_name_missing_and_unknown_fields(server: ServerThread, signer: Signer) -> None:
    record = dossier(1, TruongLa="?")
    del record["ChuHoSo"]

    with sink_for(server.url) as sink:
        [ack] = sink.push([seal(record, signer)])

    assert ack.error_code == 12
    assert "/ChuHoSo: required" in ack.message and "/TruongLa: not allowed" in ack.message
    assert "Nguyễn" not in ack.message


def test_a_new_version_becomes_current_and_lookup_returns_it_sealed(
    server: ServerThread, signer: Signer, trust: TrustStore
) -> None:
    first = seal(dossier(1), signer)
    second = seal(dossier(1, TrangThaiHoSo=9, NgayKetThucXuLy="20250104160000"), signer)

    with sink_for(server.url) as sink:
        assert codes(sink.push([first])) == [0]
        assert codes(sink.push([second])) == [0]
        assert codes(sink.push([first])) == [1]  # an old version resent does not become current
        found, missing = sink.lookup([first["MaHoSo"], "H12.99-250101-999999"])

    assert found["record"] == second and found["PhienBan"] == second["PhienBan"] and found["versions"] == 2
    assert found["stored_at"]
    payload, cert = unseal(found["record"], trust)
    assert payload["TrangThaiHoSo"] == 9 and cert == signer.certificate
    assert missing["status"] == "not_found" and missing["error_code"] != 0
    assert sandbox_stats(server.url)["dossiers"] == 1


def test_state_survives_a_restart_and_another_process_sees_it(
    tmp_path: Path, signer: Signer, trust: TrustStore
) -> None:
    record = seal(dossier(1), signer)
    with portal(tmp_path / "portal.db", trust) as first, sink_for(first.url) as sink:
        sink.push([record])
        reader = ("import json, sys; from lienthong.sandbox.portal import PortalStore; "
                  "print(json.dumps(PortalStore(sys.argv[1]).stats()))")
        seen = subprocess.run([sys.executable, "-c", reader, str(tmp_path / "portal.db")], check=True,
                              capture_output=True, text=True, timeout=60)
        assert json.loads(seen.stdout)["versions"] == 1

    with portal(tmp_path / "portal.db", trust) as second, sink_for(second.url) as sink:
        assert codes(sink.push([record])) == [1]
        assert sandbox_stats(second.url)["versions"] == 1


def test_concurrent_pushes_of_one_batch_store_each_version_once(server: ServerThread, signer: Signer) -> None:
    batch = [seal(dossier(n), signer) for n in range(1, 21)]

    def push() -> list[int]:
        with sink_for(server.url) as sink:
            return codes(sink.push(batch))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: push(), range(4)))

    assert all(sorted(column) == [0, 1, 1, 1] for column in zip(*answers))
    stats = sandbox_stats(server.url)
    assert (stats["versions"], stats["duplicates"]) == (20, 60)


def test_an_expired_session_is_renewed_transparently(tmp_path: Path, signer: Signer, trust: TrustStore) -> None:
    with portal(tmp_path / "portal.db", trust, session_ttl_s=0.5) as server, sink_for(server.url) as sink:
        assert codes(sink.push([seal(dossier(1), signer)])) == [0]
        first_session = sink._session
        time.sleep(0.7)

        assert codes(sink.push([seal(dossier(2), signer)])) == [0]
        assert sink._session != first_session


def test_a_portal_that_ends_every_session_is_unavailable_and_nothing_is_stored(
        tmp_path: Path, signer: Signer, trust: TrustStore) -> None:
    """As a restart loop, or several sinks whose sessions a storm of expiries ends: the batch stays
    pending for the next run (PortalUnavailable), it is not a refusal of the records."""
    faults = FaultConfig(expire_sessions_rate=1.0)
    with portal(tmp_path / "portal.db", trust, faults=faults) as server, sink_for(server.url, max_attempts=3) as sink:
        with pytest.raises(PortalUnavailable, match="ended the session 4 times in a row"):
            sink.push([seal(dossier(1), signer)])
        assert requests.get(f"{server.url}/_sandbox/faults", timeout=5).json()["injected"]["expire_sessions"] == 8
        assert sandbox_stats(server.url)["dossiers"] == 0


def test_a_flaky_portal_still_stores_every_record_exactly_once(
    tmp_path: Path, signer: Signer, trust: TrustStore
) -> None:
    records = [seal(dossier(n), signer) for n in range(1, 41)]
    faults = FaultConfig(error_rate=0.5, error_status=503)

    with portal(tmp_path / "portal.db", trust, faults=faults) as server:
        # 30 attempts at 50% failure: a batch gives up once in a billion runs.
        with sink_for(server.url, batch_size=10, max_attempts=30) as sink:
            acks = [ack for start in range(0, 40, 10) for ack in sink.push(records[start:start + 10])]
        requests.put(f"{server.url}/_sandbox/faults", json={"error_rate": 0}, timeout=5).raise_for_status()
        stats = sandbox_stats(server.url)

    assert all(ack.acknowledged for ack in acks) and len(acks) == 40
    assert (stats["dossiers"], stats["versions"]) == (40, 40)


def test_a_portal_that_stays_down_raises_portal_unavailable_in_bounded_time(
    tmp_path: Path, signer: Signer, trust: TrustStore
) -> None:
    faults = FaultConfig(error_rate=1.0, error_status=503)
    with portal(tmp_path / "portal.db", trust, faults=faults) as server, sink_for(server.url, max_attempts=4) as sink:
        started = time.monotonic()
        with pytest.raises(PortalUnavailable, match="HTTP 503"):
            sink.push([seal(dossier(1), signer)])
        assert time.monotonic() - started < 5

    with sink_for(f"http://127.0.0.1:{free_port()}", max_attempts=2) as nobody:
        with pytest.raises(PortalUnavailable, match="ConnectionError"):
            nobody.check()


def test_envelope_level_errors(tmp_path: Path, signer: Signer, trust: TrustStore) -> None:
    with portal(tmp_path / "portal.db", trust, max_batch=2) as server:
        def post(path: str, body: Any) -> tuple[int, dict[str, Any]]:
            response = requests.post(f"{server.url}{path}", data=json.dumps(body), timeout=5)
            return response.status_code, response.json()

        assert post("/api/login", {"username": USERNAME, "password": "wrong"})[0] == 401
        assert post("/api/login", {"username": USERNAME, "password": "wrong"})[1]["error_code"] == 1
        status, login = post("/api/login", {"username": USERNAME, "password": PASSWORD})
        assert status == 200 and login["error_code"] == 0
        session = login["session"]
        record = seal(dossier(1), signer)
        envelope = {"session": session, "service": "DongBoHoSoMC", "isUpdating": False, "data": [record]}

        assert post("/api/service", {**envelope, "session": "stale"}) == (
            401, {"error_code": 2, "message": "session invalid or expired: log in again"})
        assert post("/api/service", {**envelope, "service": "XoaHoSo"})[1]["error_code"] == 4
        assert post("/api/service", {**envelope, "data": [record] * 3})[1]["error_code"] == 5
        status, answer = post("/api/service", {key: v for key, v in envelope.items() if key != "isUpdating"})
        assert status == 400 and answer["error_code"] == 3 and "/isUpdating" in answer["message"]
        assert post("/api/service", [1, 2])[1]["error_code"] == 3
        assert post("/api/service", envelope)[1]["results"][0]["status"] == "stored"
        oversized = requests.post(f"{server.url}/api/service", data=b" " * (17 * 1024 * 1024), timeout=10)
        assert oversized.status_code == 413

    with pytest.raises(ValueError, match="batch_size"):
        sink_for(server.url, batch_size=2).push([record] * 3)


def test_wrong_credentials_fail_the_check(server: ServerThread) -> None:
    with PortalSink(server.url, USERNAME, "wrong") as sink, pytest.raises(PortalError) as caught:
        sink.check()
    assert caught.value.error_code == 1


def test_sink_from_the_airflow_connection(
    server: ServerThread, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = {"conn_type": "http", "host": "127.0.0.1", "port": server.port, "schema": "http",
                  "login": USERNAME, "password": PASSWORD, "extra": {"batch_size": 50, "timeout": 5}}
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_PORTAL", json.dumps(connection))

    with PortalSink.from_connection() as sink:
        assert (sink.base_url, sink.batch_size, sink.timeout) == (server.url, 50, 5.0)
        sink.check()
        assert codes(sink.push([seal(dossier(1), signer)])) == [0]


def test_sinks_from_a_rate_limited_connection_keep_the_portal_quota_between_them(
    tmp_path: Path, signer: Signer, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three sinks at once, as push's threads, against a portal turning away the 11th request in
    any second: from a connection without ``rate_limit`` they run into the quota and are saved by
    their retries; from one with ``rate_limit`` 6 they keep it together (one timetable in the state
    database), none turned away, in the time the pace allows. Every record is stored once."""
    monkeypatch.setenv("LIENTHONG_STATE_DB", f"sqlite:///{tmp_path / 'state.db'}")
    records = [seal(dossier(n), signer) for n in range(1, 61)]
    with portal(tmp_path / "portal.db", trust, faults=FaultConfig(quota_per_s=10)) as server:
        def turned_away() -> int:
            return requests.get(f"{server.url}/_sandbox/faults", timeout=5).json()["injected"].get("quota", 0)

        def push_with(conn_id: str, **extra: Any) -> tuple[list[Ack], float]:
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
                "conn_type": "http", "host": "127.0.0.1", "port": server.port, "schema": "http", "login": USERNAME,
                "password": PASSWORD, "extra": {"batch_size": 5, "max_attempts": 10, "backoff_max": 1, **extra}}))

            def one_sink(share: list[dict[str, Any]]) -> list[Ack]:
                with PortalSink.from_connection(conn_id) as sink:  # logs in: one request, paced too
                    return [ack for start in range(0, len(share), 5) for ack in sink.push(share[start:start + 5])]

            start = time.monotonic()
            with ThreadPoolExecutor(max_workers=3) as threads:
                acks = [ack for share in threads.map(one_sink, [records[k::3] for k in range(3)]) for ack in share]
            return acks, time.monotonic() - start

        unpaced, _ = push_with("portal_unpaced")
        assert turned_away() > 0, "unpaced, the sinks went over the quota"
        time.sleep(1)  # the quota's window empties
        before = turned_away()
        paced, elapsed = push_with("portal_paced", rate_limit=6)
        assert turned_away() == before, "paced, none was turned away"
        stats = sandbox_stats(server.url)
    assert [a.status for a in unpaced] == ["stored"] * 60 and [a.status for a in paced] == ["duplicate"] * 60
    assert (stats["dossiers"], stats["versions"]) == (60, 60)
    assert elapsed >= (3 + 12 - 1) / 6  # three logins and twelve batches, one interval apart
