"""Turns a route into an Airflow DAG; importing this costs no more than Airflow's SDK.

Tasks pass each other a small reference (route, run id, partition), never records; the heavy
libraries (pyodbc, zeep, great-expectations, cryptography) load inside the tasks, not at parse time.
The stages after extract form a task group mapped over the run's partitions, so a distributed
deployment's workers take a partition each: as many as the run's conf asks (``{"partitions": N}``,
the DAG param of that name), else ``LIENTHONG_PARTITIONS`` (1 by default). The group starts with
the partition's pull when extract cut the run into ranges (a database source), so that the pull is
shared too; otherwise extract pulled it all and that task has nothing to do.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, task, task_group

from lienthong.routes.route import Route
from lienthong.settings import MAX_PARTITIONS, PARTITIONS_CONF_KEY

DEFAULT_ARGS = {
    "owner": "lienthong",
    "retry_delay": dt.timedelta(seconds=15),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=5),
}


# task id -> the function of lienthong.routes.stages it runs, in order after extract.
STAGE_TASKS = (("pull", "pull"), ("verify", "verify"), ("map", "map_records"), ("gate", "gate_records"),
               ("sign", "sign"), ("push", "push"), ("account", "account"))


def run_params() -> dict[str, Param]:
    """The DAG params: what a run may be given, shown with its description in the trigger form.

    A param rather than a bare conf key, because Airflow 3 validates a run's conf against the
    params' JSON schema where the run is made: the trigger form and REST API refuse a bad value
    before any run exists, and ``airflow backfill create --dag-run-conf`` refuses the backfill.
    The default is null, not a count: a scheduled run has no conf, and a default of its own would
    override the workers' ``LIENTHONG_PARTITIONS``, which must stay the count when none is asked.
    """
    return {PARTITIONS_CONF_KEY: Param(
        None, type=["null", "integer"], minimum=1, maximum=MAX_PARTITIONS, title="Partitions",
        description=("How many partitions this run's stages after extract are split into, each a mapped task "
                     "a worker takes (about the workers' slots in all). Empty: the workers' LIENTHONG_PARTITIONS. "
                     "Planned once, by extract: a retry keeps the first plan."))}


def _stage_task(route_name: str, task_id: str, function: str) -> Any:
    @task(task_id=task_id)
    def run_stage(ref: dict[str, Any]) -> dict[str, Any]:
        from lienthong.routes import stages

        getattr(stages, function)(route_name, ref["run_id"], ref["partition"])
        return ref

    return run_stage


def build_dag(route: Route) -> DAG:
    name = route.name

    def ref_of(context: dict[str, Any]) -> dict[str, str]:
        from lienthong.routes.stages import run_id_for

        return {"route": name, "run_id": run_id_for(name, context["run_id"])}

    with DAG(
        dag_id=name,
        description=route.description,
        schedule=route.schedule,
        start_date=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,  # two runs of one route would pull the same window
        # Each stage resumes from staging, so a retry redoes only the unfinished part. The
        # manifest sets the retries; LIENTHONG_TASK_RETRIES overrides them for a whole deployment.
        default_args={**DEFAULT_ARGS, "retries": int(os.environ.get("LIENTHONG_TASK_RETRIES", route.retries))},
        tags=["lienthong", route.target.name, route.protocol, route.connector_id],
        params=run_params(),
        doc_md=__doc__,
    ) as dag:

        @task(task_id="extract")
        def extract(**context: Any) -> list[dict[str, Any]]:
            """One reference per partition of the run (of what it pulled, or of its ranges): what the
            stage group is mapped over."""
            from lienthong.routes import stages

            ref = ref_of(context)
            wanted = stages.requested_partitions(context["params"])  # refused before anything is pulled
            stages.extract(name, ref["run_id"], context["dag"].dag_id, context["run_id"], wanted)
            return [{**ref, "partition": k} for k in range(stages.partitions(ref["run_id"], wanted))]

        @task_group(group_id="partition")
        def partition(ref: dict[str, Any]) -> Any:
            for task_id, function in STAGE_TASKS:
                ref = _stage_task(name, task_id, function)(ref)
            return ref

        @task(task_id="record", trigger_rule=TriggerRule.ALL_DONE, retries=0)
        def record(**context: Any) -> dict[str, Any]:
            """Runs whatever happened upstream, so every pulled record is accounted for."""
            from lienthong.routes import stages

            return stages.record(name, ref_of(context)["run_id"])

        partition.expand(ref=extract()) >> record()
    return dag
