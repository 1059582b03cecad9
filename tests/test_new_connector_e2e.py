"""Onboarding a system the project has never seen, with no code change: a land-registration
office whose one-stop system keeps dossiers in one flat table with its own column names. The
agency writes a mapping and a manifest; the commands register, check and approve it; its DAG
appears in the DAG folder and moves the dossiers through Airflow to the portal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyodbc
import pytest

from lienthong.demo import run_routes
from lienthong.sandbox import seed
from lienthong.sandbox.population import PopulationRegistry
from lienthong.sandbox.portal import sandbox_stats
from tests.conftest import sqlite_connection_string
from tests.e2e import world

pytestmark = pytest.mark.slow

CONN_ID = "vpdk_land_db"
TABLE = """CREATE TABLE ho_so_dat_dai (
    so_ho_so INTEGER PRIMARY KEY, ma_ho_so VARCHAR(50) NOT NULL, ma_thu_tuc VARCHAR(20),
    ten_thu_tuc VARCHAR(500), cccd_nguoi_nop VARCHAR(12), ten_nguoi_nop VARCHAR(200),
    ngay_sinh DATE, gioi_tinh CHAR(1), ngay_nhan TIMESTAMP NOT NULL, ngay_hen_tra TIMESTAMP,
    tinh_trang VARCHAR(50) NOT NULL, nop_truc_tuyen SMALLINT NOT NULL, sua_luc TIMESTAMP NOT NULL)"""

MAPPING = """
name: dat_dai
version: 1
description: Hồ sơ đất đai của Văn phòng đăng ký đất đai lên Cổng dịch vụ công quốc gia
key: MaHoSo
subject:
  personal_id: cccd_nguoi_nop
  full_name: ten_nguoi_nop
  date_of_birth: ngay_sinh
  gender: gioi_tinh
fields:
  MaHoSo: {from: ma_ho_so, transform: text}
  MaTTHC: {from: ma_thu_tuc, transform: text}
  TenTTHC: {from: ten_thu_tuc, transform: text}
  ChuHoSo: {from: ten_nguoi_nop, transform: name}
  LoaiDoiTuong: {const: 1}
  MaDoiTuong: {from: cccd_nguoi_nop, transform: text}
  NgayTiepNhan: {from: ngay_nhan, transform: datetime}
  NgayHenTra: {from: ngay_hen_tra, transform: datetime}
  TrangThaiHoSo: {from: tinh_trang, code_table: status}
  HinhThuc: {from: nop_truc_tuyen, transform: int}
  DonViXuLy: {const: 000.00.19.H40}
code_tables:
  status: {MOI_TAO: 1, DA_TIEP_NHAN: 2, KHONG_TIEP_NHAN: 3, DANG_XU_LY: 4, DANG_XU_LY.THAM_DINH: 4,
           DANG_XU_LY.TRINH_KY: 4, CHO_BO_SUNG: 5, CHO_NGHIA_VU_TAI_CHINH: 6, RUT_HO_SO: 7,
           DUNG_XU_LY: 8, DA_XU_LY_XONG: 9, DA_TRA_KET_QUA: 10}
"""

MANIFEST = """
manifest_version: 1
id: vpdk-nghe-an
agency:
  slug: vpdk_h40
  code: 000.00.19.H40
  name: Văn phòng đăng ký đất đai tỉnh Nghệ An
system:
  name: Phần mềm một cửa đất đai
  protocol: odbc
  connection_id: vpdk_land_db
signing_key: agency
schedule: "0 * * * *"
retries: 1
streams:
  - name: ho_so
    target: dossier_sync
    mapping: dat_dai.yaml
    table: ho_so_dat_dai
    primary_key: so_ho_so
    cursor_field: sua_luc
    page_size: 50
    columns: [ma_ho_so, ma_thu_tuc, ten_thu_tuc, cccd_nguoi_nop, ten_nguoi_nop, ngay_sinh, gioi_tinh,
              ngay_nhan, ngay_hen_tra, tinh_trang, nop_truc_tuyen]
"""


def _land_registry(path: Path, count: int) -> tuple[list[str], list[seed.Citizen]]:
    """The office's database, filled from good generated dossiers; their codes and citizens."""
    made = seed.generate(count, seed=7)
    people = {a.id: a for a in made.applicants}
    good = [d for d in made.dossiers if d.defect is None and d.applicant_id in people]
    with pyodbc.connect(sqlite_connection_string(path), autocommit=False) as conn:
        conn.cursor().execute(TABLE)
        conn.cursor().executemany(
            "INSERT INTO ho_so_dat_dai VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(d.id, f"VPDK-{d.code}", d.procedure_code, d.procedure_name, people[d.applicant_id].personal_id,
              people[d.applicant_id].full_name, people[d.applicant_id].date_of_birth, people[d.applicant_id].gender,
              d.received_at, d.appointment_at, d.status, int(d.channel == "online"), d.updated_at) for d in good])
        conn.commit()
    return [f"VPDK-{d.code}" for d in good], made.citizens


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lienthong.cli", "connectors", *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_a_never_seen_system_is_registered_checked_approved_and_run_by_its_dag(tmp_path: Path) -> None:
    with world(tmp_path / "home", 0, examples=()) as w, pytest.MonkeyPatch.context() as mp:
        db = tmp_path / "dat_dai.db"
        codes, citizens = _land_registry(db, 60)
        PopulationRegistry(w.settings.sandbox_dir / "population.db").add_citizens(citizens)
        mp.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
            {"conn_type": "odbc", "schema": str(db), "extra": {"driver": "SQLite3"}}))
        (tmp_path / "dat_dai.yaml").write_text(MAPPING, encoding="utf-8")
        manifest = tmp_path / "vpdk.yaml"
        manifest.write_text(MANIFEST, encoding="utf-8")

        registered = _cli("register", str(manifest), "--by", "agency-vpdk")
        assert registered.returncode == 0, registered.stdout + registered.stderr
        checked = _cli("check", "vpdk-nghe-an")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "ho_so_dat_dai" in checked.stdout + checked.stderr
        # Not approved yet: no DAG, so the run finds nothing to run.
        with pytest.raises(RuntimeError, match="no DAG"):
            run_routes(w.settings, ["vpdk_h40__ho_so"])
        approved = _cli("approve", "vpdk-nghe-an", "--by", "engineer-an")
        assert approved.returncode == 0, approved.stdout + approved.stderr

        run = run_routes(w.settings, ["vpdk_h40__ho_so"])[0]
        assert (run["status"], run["dag_run_state"]) == ("success", "success"), run
        assert run["counts"]["pulled"] == len(codes) == run["counts"]["acknowledged"]
        assert sandbox_stats(w.sandbox.url("portal"))["dossiers"] == len(codes)

        listed = _cli("list")
        assert listed.returncode == 0 and "vpdk-nghe-an" in listed.stdout
