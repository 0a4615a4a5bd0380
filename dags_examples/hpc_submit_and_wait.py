"""Submit a batch job and wait for it in the triggerer (no worker slot held while it runs).

The job's stdout/stderr tails end up in the task log; the job's API URL is the task's
"HPC Job" extra link; a retry re-attaches to the same job instead of submitting again,
and clearing or marking the task while it waits cancels the job.

Connection ``hpc_default`` (Admin > Connections, or ``AIRFLOW_CONN_HPC_DEFAULT``; see
the provider README). Params, shown in the UI's trigger form (*Trigger DAG*, then edit
the fields; or a run's conf ``{"workdir": ...}``):

- ``system``: the cluster; default ``HPC_SYSTEM``, else ``hpcsite``.
- ``workdir``: the base directory on the cluster the run writes under. Left empty
  (the default unless ``HPC_WORKDIR`` is set where the DAG is parsed) it is the
  connection user's own directory, asked of the API when the run starts: the first of
  ``<scratch>/<user>`` and ``<home filesystem>/<user>`` that exists (on the local site
  ``.site/fs/scratch/hpcuser1``). Type a path in the form to use another one.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from airflow_provider_hpc.fs.workdir import hpc_workdir
from airflow_provider_hpc.operators.files import HpcFileOperator
from airflow_provider_hpc.operators.job import HpcSubmitJobOperator

SYSTEM = os.environ.get("HPC_SYSTEM", "hpcsite")
WORKDIR = os.environ.get("HPC_WORKDIR", "")
PARAMS = {
    "system": Param(SYSTEM, type="string", description="cluster (system) name"),
    "workdir": Param(
        WORKDIR,
        type=["null", "string"],
        title="Working directory",
        description="base directory on the cluster; empty: your scratch (or home) directory",
    ),
    "steps": Param(3, type="integer", minimum=1, description="simulation steps (1 s each)"),
}
#: The run's own directory on the cluster (run ids contain ':' and '+').
RUN_DIR = "{{ hpc_workdir(params.workdir, params.system) }}/{{ dag.dag_id }}/{{ run_id | slug }}"
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=10), "hpc_conn_id": "hpc_default"}


def slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)


with DAG(
    dag_id="hpc_submit_and_wait",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    default_args=DEFAULT_ARGS,
    tags=["hpc", "example"],
    doc_md=__doc__,
    user_defined_filters={"slug": slug},
    user_defined_macros={"hpc_workdir": hpc_workdir},
):
    workdir = HpcFileOperator(
        task_id="make_workdir", operation="mkdir", path=RUN_DIR, system="{{ params.system }}"
    )

    simulate = HpcSubmitJobOperator(
        task_id="simulate",
        system="{{ params.system }}",
        working_directory=RUN_DIR,
        job_name="simulate",
        script="""#!/bin/bash
echo "simulating on $(hostname) for run {{ run_id }}"
for step in $(seq 1 {{ params.steps }}); do echo "step $step"; sleep 1; done
echo "result=42"
""",
        env={"RUN_ID": "{{ run_id }}"},
        time_limit=10,
        deferrable=True,
        poll_interval=2,
    )

    @task
    def report(result: dict) -> str:
        print(f"job {result['job_id']} finished {result['state']} (exit {result['exit_code']})")
        return result["state"]

    workdir >> simulate
    report(simulate.output)
