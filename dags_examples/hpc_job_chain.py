"""A chain of jobs ordered by Slurm dependencies.

``prepare`` and ``simulate`` return as soon as they are submitted; ``simulate`` and
``analyse`` depend on the previous job (``afterok``) through XComArgs, so Slurm runs them
in order without Airflow polling in between; only ``analyse`` is waited for (deferred).
Then the answer is copied into the run's ``results`` directory and the intermediate file
moved there (``cp`` / ``mv`` run as data-movement jobs on the cluster).

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

from airflow.sdk import DAG, Param

from airflow_provider_hpc.fs.workdir import hpc_workdir
from airflow_provider_hpc.operators.files import HpcFileOperator
from airflow_provider_hpc.operators.job import HpcSubmitJobOperator
from airflow_provider_hpc.sensors.files import HpcFileSensor

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
}
#: The run's own directory on the cluster (run ids contain ':' and '+').
RUN_DIR = "{{ hpc_workdir(params.workdir, params.system) }}/{{ dag.dag_id }}/{{ run_id | slug }}"
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=10), "hpc_conn_id": "hpc_default"}


def slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)


COMMON = {"system": "{{ params.system }}", "working_directory": RUN_DIR, "time_limit": 5}

with DAG(
    dag_id="hpc_job_chain",
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
    prepare = HpcSubmitJobOperator(
        task_id="prepare",
        job_name="prepare",
        script="#!/bin/bash\necho 6 > prepared.txt\n",
        wait_for_completion=False,
        **COMMON,
    )
    simulate = HpcSubmitJobOperator(
        task_id="simulate",
        job_name="simulate",
        script="#!/bin/bash\necho $(( $(cat prepared.txt) * 7 )) > simulated.txt\n",
        dependencies=prepare.output,
        wait_for_completion=False,
        **COMMON,
    )
    analyse = HpcSubmitJobOperator(
        task_id="analyse",
        job_name="analyse",
        script='#!/bin/bash\necho "answer: $(cat simulated.txt)" | tee answer.txt\n',
        dependencies=simulate.output,
        deferrable=True,
        poll_interval=2,
        **COMMON,
    )
    answer = HpcFileSensor(
        task_id="answer_written",
        system="{{ params.system }}",
        path=RUN_DIR + "/answer.txt",
        deferrable=True,
        poke_interval=2,
        timeout=300,
    )
    results = HpcFileOperator(
        task_id="results_dir",
        operation="mkdir",
        path=RUN_DIR + "/results",
        system="{{ params.system }}",
    )
    publish = HpcFileOperator(
        task_id="publish_answer",
        operation="cp",
        path=RUN_DIR + "/answer.txt",
        target_path=RUN_DIR + "/results/answer.txt",
        system="{{ params.system }}",
        poll_interval=2,
    )
    keep = HpcFileOperator(
        task_id="keep_intermediate",
        operation="mv",
        path=RUN_DIR + "/simulated.txt",
        target_path=RUN_DIR + "/results/simulated.txt",
        system="{{ params.system }}",
        poll_interval=2,
    )
    workdir >> prepare
    analyse >> answer >> results >> [publish, keep]
