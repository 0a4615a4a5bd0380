"""Cluster files as ``ObjectStoragePath``: write the input, run a job on it, read the result.

``hpc://hpc_default@<system>/<absolute path>`` names a file on the cluster through the
connection ``hpc_default``; reading, writing, listing, copying and deleting go through
the API as the connection's user, streamed (large files through the resumable transfer
flow) and checked against the server's SHA-256. Here:

1. ``write_input`` writes a CSV straight to the cluster (``path.open("w")``);
2. ``sum_job`` (a Slurm job) reads it there and writes ``result.csv``;
3. ``read_result`` reads the result from the cluster, lists the run directory and copies
   the result to the worker's disk (``ObjectStoragePath.copy`` to a ``file://`` path).

Connection ``hpc_default`` (Admin > Connections, or ``AIRFLOW_CONN_HPC_DEFAULT``; see
the provider README). Params, shown in the UI's trigger form (*Trigger DAG*, then edit
the fields; or a run's conf ``{"workdir": ...}``):

- ``system``: the cluster; default ``HPC_SYSTEM``, else ``hpcsite``.
- ``workdir``: the base directory on the cluster the run writes under. Left empty
  (the default unless ``HPC_WORKDIR`` is set where the DAG is parsed) it is the
  connection user's own directory, asked of the API when the run starts: the first of
  ``<scratch>/<user>`` and ``<home filesystem>/<user>`` that exists (on the local site
  ``.site/fs/scratch/hpcuser1``). Type a path in the form to use another one.
- ``rows``: how many rows the input has.
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import datetime, timedelta

from airflow.sdk import DAG, ObjectStoragePath, Param, task

from airflow_provider_hpc.fs.workdir import hpc_workdir
from airflow_provider_hpc.operators.job import HpcSubmitJobOperator

SYSTEM = os.environ.get("HPC_SYSTEM", "hpcsite")
WORKDIR = os.environ.get("HPC_WORKDIR", "")
LOCAL_DIR = os.environ.get("HPC_LOCAL_DIR", os.path.join(tempfile.gettempdir(), "hpc-examples"))
PARAMS = {
    "system": Param(SYSTEM, type="string", description="cluster (system) name"),
    "workdir": Param(
        WORKDIR,
        type=["null", "string"],
        title="Working directory",
        description="base directory on the cluster; empty: your scratch (or home) directory",
    ),
    "rows": Param(100, type="integer", minimum=1, description="rows of the input CSV"),
}
#: The run's own directory on the cluster (run ids contain ':' and '+').
RUN_DIR = "{{ hpc_workdir(params.workdir, params.system) }}/{{ dag.dag_id }}/{{ run_id | slug }}"
#: The same directory as an ``hpc://`` URL (connection ``hpc_default``).
RUN_URL = "hpc://hpc_default@{{ params.system }}" + RUN_DIR
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=10), "hpc_conn_id": "hpc_default"}


def slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)


with DAG(
    dag_id="hpc_object_storage",
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
    def write_input(run_url: str, rows: str) -> str:
        count = int(rows)  # a rendered template: text
        run_dir = ObjectStoragePath(run_url)
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / "input.csv").open("w") as out:
            out.write("n,value\n")
            out.writelines(f"{n},{n * n}\n" for n in range(1, count + 1))
        print(f"wrote {run_dir / 'input.csv'} ({(run_dir / 'input.csv').stat().st_size} bytes)")
        return str(run_dir)

    sum_job = HpcSubmitJobOperator(
        task_id="sum_job",
        system="{{ params.system }}",
        working_directory=RUN_DIR,
        job_name="sum",
        script="""#!/bin/bash
set -euo pipefail
awk -F, 'NR > 1 { total += $2 } END { print "rows," NR - 1; print "total," total }' \\
    input.csv > result.csv
cat result.csv
""",
        time_limit=5,
        deferrable=True,
        poll_interval=2,
    )

    @task
    def read_result(run_url: str, rows: str, local_dir: str) -> int:
        count = int(rows)
        run_dir = ObjectStoragePath(run_url)
        print("run directory:", sorted(p.name for p in run_dir.iterdir()))
        result = dict(line.split(",") for line in (run_dir / "result.csv").read_text().splitlines())
        total = int(result["total"])
        assert int(result["rows"]) == count, result
        assert total == sum(n * n for n in range(1, count + 1)), result
        local = ObjectStoragePath(f"file://{local_dir}/result.csv")
        local.parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "result.csv").copy(local)
        print(f"sum of squares 1..{count} = {total}; copied to {local}")
        return total

    written = write_input(RUN_URL, "{{ params.rows }}")
    (
        written
        >> sum_job
        >> read_result(
            RUN_URL, "{{ params.rows }}", LOCAL_DIR + "/{{ dag.dag_id }}/{{ run_id | slug }}"
        )
    )
