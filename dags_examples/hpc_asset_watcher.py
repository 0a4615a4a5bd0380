"""Start a DAG when a job ends on the cluster, whoever submitted it.

The asset ``hpc://<system>/jobs/<pattern>`` is watched by ``HpcJobEventTrigger`` on
hpcgate's job event stream: when one of the connection user's jobs whose name matches
``HPC_ASSET_JOB_PATTERN`` (default ``hpc-asset-*``) ends COMPLETED — submitted by
Airflow, a script over the API or ``sbatch`` on a login node — the asset gets one event
and this DAG runs once for it, with the job in the event's ``extra["payload"]``.

Connection: ``AIRFLOW_CONN_HPC_DEFAULT`` (JSON form, see the provider README). The
system defaults to ``HPC_SYSTEM`` (else the connection's).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_provider_hpc.triggers.asset_events import HpcJobEventTrigger

SYSTEM = os.environ.get("HPC_SYSTEM") or None
PATTERN = os.environ.get("HPC_ASSET_JOB_PATTERN", "hpc-asset-*")

job_ended = Asset(
    name=f"hpc_jobs_ended_{PATTERN}",
    uri=f"hpc://{SYSTEM or 'default'}/jobs/{PATTERN}",
    watchers=[
        AssetWatcher(
            name="hpc_job_events",
            trigger=HpcJobEventTrigger(
                hpc_conn_id="hpc_default",
                system=SYSTEM,
                name_pattern=PATTERN,
                states=["COMPLETED"],
            ),
        )
    ],
)


with DAG(
    dag_id="hpc_asset_watcher",
    schedule=[job_ended],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["hpc", "example"],
    doc_md=__doc__,
):

    @task
    def on_job_end(**context: object) -> list[str]:
        """Log and return the ids of the jobs that started this run."""
        events = context["triggering_asset_events"]
        jobs = []
        for asset_events in events.values():  # type: ignore[attr-defined]
            for event in asset_events:
                payload = (event.extra or {}).get("payload", {})
                job_id, name, state = (payload.get(k) for k in ("job_id", "name", "state"))
                print(f"job {job_id} ({name}) ended {state}")
                jobs.append(str(payload.get("job_id")))
        return jobs

    on_job_end()
