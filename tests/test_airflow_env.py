"""The embedded runner's in-process Execution API: built for the one version its task runner
speaks, so that a run with nothing new does not spend most of its time building the routes of
versions nobody asks for. Each check runs in a child process, as the runner does, because the
narrowing changes Airflow's module state for the rest of the process."""

from __future__ import annotations

import json
import subprocess
import sys

from lienthong import airflow_env
from lienthong.settings import Settings

# Pings the in-process API at the runner's own version and at the first one (Airflow 3.0's).
_PING = """
import json, httpx
{before}
from lienthong.airflow_env import _serve_only_the_runners_api_version
narrowed = _serve_only_the_runners_api_version()
from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI
from airflow.sdk.api.datamodels._generated import API_VERSION
api = InProcessExecutionAPI()
with httpx.Client(transport=api.transport, base_url="http://in-process.invalid") as client:
    answers = {{version: client.get("/health/ping", headers={{"Airflow-API-Version": version}}).status_code
               for version in (API_VERSION, "2025-04-11")}}
print(json.dumps({{"narrowed": narrowed, "current": answers[API_VERSION], "oldest": answers["2025-04-11"],
                  "built": sorted(api.app.router.versioned_routers)}}))
"""


def _ping(home: Settings, before: str = "") -> dict:
    child = subprocess.run([sys.executable, "-c", _PING.format(before=before)], env=airflow_env.environment(home),
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_the_in_process_api_serves_only_the_version_the_task_runner_speaks(home: Settings) -> None:
    # Fails when an Airflow upgrade makes the runner keep Airflow's whole bundle again: runs with
    # nothing new would then take 4 to 6 s longer (see README, How fast).
    answer = _ping(home)
    assert answer["narrowed"] is True
    assert answer["current"] == 200
    assert answer["oldest"] == 404  # not built
    assert len(answer["built"]) == 1


def test_a_task_sdk_speaking_another_version_keeps_airflows_whole_bundle(home: Settings) -> None:
    answer = _ping(home, before="import airflow.sdk.api.datamodels._generated as g; g.API_VERSION = '2026-04-06'")
    assert answer["narrowed"] is False
    assert answer["oldest"] == 200
    assert len(answer["built"]) > 1
