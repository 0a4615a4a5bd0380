"""Wait for a job submitted outside Airflow (by a user, a portal, another tool).

Trigger with ``{"job_id": "<id>"}`` in the run conf. The sensor defers to the triggerer
and never cancels the job: it is not Airflow's. A failed job fails the sensor; a
COMPLETED one lets the run go on.

Connection: ``AIRFLOW_CONN_HPC_DEFAULT`` (JSON form, see the provider README). The
``system`` param defaults to ``HPC_SYSTEM`` (else ``hpcsite``).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from airflow_provider_hpc.sensors.job import HpcJobSensor

SYSTEM = os.environ.get("HPC_SYSTEM", "hpcsite")
PARAMS = {
    "system": Param(SYSTEM, type="string", description="cluster (system) name"),
}
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=10), "hpc_conn_id": "hpc_default"}


with DAG(
    dag_id="hpc_sensor_external_job",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        **PARAMS,
        "job_id": Param("", type="string", description="the external job's id (required)"),
    },
    default_args={**DEFAULT_ARGS, "retries": 0},
    tags=["hpc", "example"],
    doc_md=__doc__,
):
    job_done = HpcJobSensor(
        task_id="wait_for_job",
        system="{{ params.system }}",
        job_id="{{ params.job_id }}",
        deferrable=True,
        poke_interval=2,
        timeout=3600,
    )

    @task
    def summary(job: dict) -> None:
        print(f"external job {job['job_id']} {job['state']} (exit code {job['exit_code']})")

    summary(job_done.output)
