"""A job that survives the machine: pre-flight, failure-aware resubmission, accounting.

``simulate`` first asks the scheduler whether it would accept the job (``preflight``: a
bad account, partition, QOS or time limit fails the task at once, before anything
waits). A job the machine ends (NODE_FAIL, BOOT_FAIL, PREEMPTED, a requeue Slurm gave
up on) is resubmitted, at most twice, without using the task's Airflow retries; an
OUT_OF_MEMORY job comes back with twice the memory (up to 4G), a TIMEOUT with 1.5 times the
time limit (up to 30 minutes). Ordinary failures fail at once with the stderr tail.
The return value lists every job the task made (id, state, reason, action, resources,
accounting); ``report`` prints it. With Airflow's OpenLineage provider configured, the
task reports the jobs as run facets and ``result.txt`` as its output dataset.

Params default from ``HPC_SYSTEM`` (``hpcsite``) and ``HPC_WORKDIR``; ``no_requeue``
asks Slurm not to requeue the job itself after a node failure (then the task does).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from airflow_provider_hpc.operators.files import HpcFileOperator
from airflow_provider_hpc.operators.job import HpcSubmitJobOperator

SYSTEM = os.environ.get("HPC_SYSTEM", "hpcsite")
WORKDIR = os.environ.get("HPC_WORKDIR", "/scratch/hpcuser")
PARAMS = {
    "system": Param(SYSTEM, type="string", description="cluster (system) name"),
    "workdir": Param(WORKDIR, type="string", description="base directory on the cluster"),
    "steps": Param(3, type="integer", minimum=1, description="seconds of work"),
    "account": Param(None, type=["null", "string"], description="Slurm account (pre-flight)"),
    "no_requeue": Param(False, type="boolean", description="#SBATCH --no-requeue"),
}
RUN_DIR = "{{ params.workdir }}/{{ dag.dag_id }}/{{ run_id | slug }}"
DEFAULT_ARGS = {"retries": 1, "retry_delay": timedelta(seconds=10), "hpc_conn_id": "hpc_default"}


def slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)


with DAG(
    dag_id="hpc_resilient_job",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    tags=["hpc", "example"],
    doc_md=__doc__,
    user_defined_filters={"slug": slug},
):
    workdir = HpcFileOperator(
        task_id="make_workdir", operation="mkdir", path=RUN_DIR, system="{{ params.system }}"
    )

    simulate = HpcSubmitJobOperator(
        task_id="simulate",
        system="{{ params.system }}",
        working_directory=RUN_DIR,
        job_name="resilient",
        account="{{ params.account or '' }}",
        script="""#!/bin/bash
{% if params.no_requeue %}#SBATCH --no-requeue{% endif %}
echo "attempt on $(hostname), job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}"
for step in $(seq 1 {{ params.steps }}); do sleep 1; done
echo "result=42" | tee result.txt
""",
        time_limit=10,
        memory="1G",
        deferrable=True,
        poll_interval=2,
        preflight=True,
        max_resubmits=2,
        oom_memory_factor=2,
        oom_max_memory="4G",
        timeout_factor=1.5,
        timeout_max_time_limit=30,
        outputs=["result.txt"],
    )

    @task
    def report(result: dict) -> list[str]:
        lines = []
        for job in result["jobs"]:
            accounting = job.get("accounting") or {}
            lines.append(
                f"job {job['job_id']}: {job['state']} -> {job['action']} "
                f"({job.get('reason') or 'no reason'}; elapsed "
                f"{accounting.get('elapsed_seconds')} s, {accounting.get('cpu_hours')} CPU-h)"
            )
        print("\n".join(lines))
        return lines

    workdir >> simulate
    report(simulate.output)
