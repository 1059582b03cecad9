"""A route's DAG run through Airflow with its staging in an S3 bucket (moto's server over HTTP),
chosen as a deployment chooses it: the staging URL and an Airflow connection in the environment
that Airflow's processes inherit. It must end as it does on local staging."""

from __future__ import annotations

from pathlib import Path

import pytest

from lienthong.demo import run_routes
from lienthong.staging import route_runs
from tests.conftest import S3_SECRET, STAGING_CONN_ID, s3_client
from tests.e2e import account_for_every_dossier, leaks, secrets_of, world

pytestmark = [pytest.mark.slow, pytest.mark.s3]
ROUTE = "stp_h40__dossiers"


def test_a_route_staged_in_a_bucket_settles_every_dossier_and_leaves_no_personal_data(
        tmp_path: Path, s3_staging: str, s3_endpoint: str) -> None:
    with world(tmp_path / "home", 300) as w:
        assert str(w.settings.staging_dir).startswith("s3://") and w.settings.staging_conn_id == STAGING_CONN_ID
        run = run_routes(w.settings, [ROUTE])[0]
        assert (run["status"], run["dag_run_state"]) == ("success", "success"), run["log_file"]
        assert run["counts"]["pulled"] == 300 and run["counts"]["pending"] == 0
        account_for_every_dossier(w, ROUTE, [run["run_id"]])

        assert not (w.settings.home / "staging").exists()  # nothing was staged locally
        assert route_runs(w.settings.staging_dir, ROUTE) == []  # the settled run's staging is purged
        bucket = s3_staging.removeprefix("s3://").split("/")[0]
        assert s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # no personal data left
        assert leaks(w.settings.home, secrets_of(w.settings, w.conn_str) | {S3_SECRET}) == []
