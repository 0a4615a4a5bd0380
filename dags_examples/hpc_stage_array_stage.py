"""Stage in -> array job -> stage out.

An input file made on the worker is uploaded (streamed, sha256 verified), a 4-task Slurm
array processes it (the script is a Jinja template file next to this DAG, in
``scripts/``), and each task's output is downloaded by a mapped task and summed.

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
import tempfile
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from airflow_provider_hpc.fs.workdir import hpc_workdir
from airflow_provider_hpc.operators.files import (
    HpcDownloadOperator,
    HpcFileOperator,
    HpcUploadOperator,
)
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
}
#: The run's own directory on the cluster (run ids contain ':' and '+').
RUN_DIR = "{{ hpc_workdir(params.workdir, params.system) }}/{{ dag.dag_id }}/{{ run_id | slug }}"
LOCAL_DIR = os.environ.get("HPC_LOCAL_DIR", os.path.join(tempfile.gettempdir(), "hpc-examples"))
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=10), "hpc_conn_id": "hpc_default"}


def slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)


TASKS = 4
LOCAL_RUN_DIR = LOCAL_DIR + "/{{ dag.dag_id }}/{{ run_id | slug }}"

with DAG(
    dag_id="hpc_stage_array_stage",
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

    @task
    def make_input(local_dir: str) -> str:
        os.makedirs(local_dir, exist_ok=True)
        path = os.path.join(local_dir, "input.txt")
        with open(path, "w") as handle:
            handle.writelines(f"{n}\n" for n in range(1, TASKS + 1))
        return path

    workdir = HpcFileOperator(
        task_id="make_workdir", operation="mkdir", path=RUN_DIR, system="{{ params.system }}"
    )

    stage_in = HpcUploadOperator(
        task_id="stage_in",
        system="{{ params.system }}",
        local_path=make_input(LOCAL_RUN_DIR),
        remote_path=RUN_DIR + "/input.txt",
    )

    array = HpcSubmitJobOperator(
        task_id="square_array",
        system="{{ params.system }}",
        working_directory=RUN_DIR,
        job_name="square",
        script="scripts/array_task.sh",
        array=f"0-{TASKS - 1}",
        time_limit=5,
        deferrable=True,
        poll_interval=2,
    )

    stage_out = HpcDownloadOperator.partial(
        task_id="stage_out", system="{{ params.system }}"
    ).expand_kwargs(
        [
            {"remote_path": f"{RUN_DIR}/out_{i}.txt", "local_path": f"{LOCAL_RUN_DIR}/out_{i}.txt"}
            for i in range(TASKS)
        ]
    )

    @task
    def total(results: list[dict]) -> int:
        value = sum(int(open(r["local_path"]).read()) for r in results)
        print(f"sum of squares = {value}")
        assert value == sum(n * n for n in range(1, TASKS + 1))
        return value

    workdir >> stage_in >> array >> stage_out
    total(stage_out.output)
