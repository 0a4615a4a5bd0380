"""Run one example DAG with ``dag.test()`` in this process and print the outcome as JSON.

Usage: ``python -m tests.provider.dagrun DAG_ID [--conf JSON] [--fake]``, with
``AIRFLOW_HOME`` pointing at a migrated metadata database and ``[core] dags_folder`` at
``dags_examples``. ``dag.test()`` runs tasks and triggers inline (deferral included).

``--fake`` answers the API with :class:`FakeHpcApi` and simulates what the example jobs
write; without it the DAG talks to whatever ``AIRFLOW_CONN_HPC_DEFAULT`` names (the
integration tests' real server).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any


def _simulate_jobs(api: Any) -> None:
    """Make the fake's jobs leave the files the example scripts would write."""
    from tests.provider.fakeapi import FakeJob

    original = api._submit

    def submit(request: Any, system: str) -> Any:
        response = original(request, system)
        job: FakeJob = api.jobs[response.json()["jobId"]]
        workdir, spec = job.working_directory, job.spec
        if spec.get("array"):
            first, last = (int(x) for x in re.match(r"(\d+)-(\d+)", spec["array"]).groups())
            for i in range(first, last + 1):
                api.files[f"{workdir}/out_{i}.txt"] = f"{(i + 1) ** 2}\n".encode()
        for name in re.findall(r"(?:>|tee) ?([\w.]+\.txt)", spec.get("script") or ""):
            api.files[f"{workdir}/{name}"] = b"42\n"
        return response

    api._submit = submit


def _label(task_id: str, map_index: int) -> str:
    return f"{task_id}[{map_index}]" if map_index >= 0 else task_id


def _xcoms(dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """Every XCom of the run: ``{"task[map_index]": {key: value}}``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    values: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        for row in session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id)):
            label = _label(row.task_id, row.map_index)
            values.setdefault(label, {})[row.key] = XComModel.deserialize_value(row)
    return values


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_id")
    parser.add_argument("--conf", default="{}")
    parser.add_argument("--fake", action="store_true")
    parser.add_argument("--external-job", action="store_true", help="fake: add a job, pass its id")
    args = parser.parse_args()
    conf = json.loads(args.conf)
    api = None
    if args.fake:
        from airflow_provider_hpc.hooks.hpc import HpcHook
        from tests.provider.fakeapi import FakeHpcApi

        api = FakeHpcApi()
        api.plan = ["RUNNING", "COMPLETED"]
        api.dirs.add("/scratch/hpcuser")
        _simulate_jobs(api)
        HpcHook.transport = api.transport
        if args.external_job:
            conf["job_id"] = api.add_job("external", plan=["RUNNING", "COMPLETED"]).job_id

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import conf as airflow_conf

    bag = DagBag(dag_folder=airflow_conf.get("core", "dags_folder"))
    if bag.import_errors:
        print(json.dumps({"import_errors": bag.import_errors}))
        return 2
    start = time.monotonic()
    run = bag.dags[args.dag_id].test(run_conf=conf or None)
    instances = run.get_task_instances()
    outcome = {
        "dag_id": args.dag_id,
        "run_id": run.run_id,
        "conf": conf,
        "state": str(run.state),
        "seconds": round(time.monotonic() - start, 1),
        "tasks": {_label(ti.task_id, ti.map_index): str(ti.state) for ti in instances},
        "tries": {_label(ti.task_id, ti.map_index): ti.try_number for ti in instances},
        "xcoms": _xcoms(args.dag_id, run.run_id),
    }
    if api is not None:
        outcome["requests"] = [f"{r.method} {r.url.path}" for r in api.requests]
        outcome["jobs"] = {
            j.job_id: {"name": j.name, "state": j.state, "dependencies": j.spec.get("dependencies")}
            for j in api.jobs.values()
        }
    print("DAGRUN " + json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
