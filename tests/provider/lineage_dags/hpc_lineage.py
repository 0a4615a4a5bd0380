"""The lineage test's DAG (``tests/provider/test_lineage_site.py``): stage in, one job.

``stage_in`` uploads the worker file ``conf.local_input`` to ``<workdir>/input.txt``;
``count`` runs a deferrable job that reads ``input.txt`` and writes ``result.txt``,
both named as the operator's ``inputs`` / ``outputs`` (relative to its working
directory) so that OpenLineage reports them as datasets.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_hpc.operators.files import HpcUploadOperator
from airflow_provider_hpc.operators.job import HpcSubmitJobOperator

SYSTEM = os.environ.get("HPC_SYSTEM", "hpcsite")
WORKDIR = "{{ dag_run.conf['workdir'] }}"

with DAG(
    dag_id="hpc_lineage",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"hpc_conn_id": "hpc_default"},
    tags=["hpc", "test"],
):
    stage_in = HpcUploadOperator(
        task_id="stage_in",
        system=SYSTEM,
        local_path="{{ dag_run.conf['local_input'] }}",
        remote_path=WORKDIR + "/input.txt",
    )
    count = HpcSubmitJobOperator(
        task_id="count",
        system=SYSTEM,
        working_directory=WORKDIR,
        job_name="lineage",
        script="#!/bin/bash\nwc -l < input.txt > result.txt\n",
        time_limit=5,
        deferrable=True,
        poll_interval=1,
        inputs=["input.txt"],
        outputs=["result.txt"],
    )
    stage_in >> count
