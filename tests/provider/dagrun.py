"""Run one example DAG with ``dag.test()`` in this process and print the outcome as JSON.

Usage: ``python -m tests.provider.dagrun DAG_ID [--conf JSON] [--fake]``, with
``AIRFLOW_HOME`` pointing at a migrated metadata database and ``[core] dags_folder`` at
``dags_examples``. ``dag.test()`` runs tasks and triggers inline (deferral included).

``--fake`` serves the real application in this process over a fake cluster
(``tests.provider.realapi``) that simulates what the example jobs write; without it the
DAG talks to whatever ``AIRFLOW_CONN_HPC_DEFAULT`` names (the integration tests' real
server on the local site).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.provider.cluster import FakeCluster, FakeJob
    from tests.provider.realapi import RealApi


def _simulate_jobs(cluster: FakeCluster) -> None:
    """Make the fake cluster's jobs leave the files the example scripts would write."""

    def written(job: FakeJob) -> None:
        spec = job.description
        if spec is None:
            return
        workdir = job.working_directory
        if spec.array:
            match = re.match(r"(\d+)-(\d+)", spec.array)
            assert match is not None
            first, last = (int(x) for x in match.groups())
            for i in range(first, last + 1):
                cluster.files[f"{workdir}/out_{i}.txt"] = f"{(i + 1) ** 2}\n".encode()
        for name in re.findall(r"(?:>|tee) ?([\w.]+\.txt)", spec.script or ""):
            cluster.files[f"{workdir}/{name}"] = b"42\n"

    cluster.on_submit = written


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


def _drop_repo_root() -> None:
    """Take the repository root off ``sys.path`` before Airflow loads its plugins.

    The root holds ``hpcgate.egg-info`` (what ``pip install -e`` leaves there), a second
    copy of the provider's distribution beside the editable install's, so hpcgate's
    plugin entry point is listed once per root entry on ``sys.path`` (here the working
    directory and ``PYTHONPATH``: twice) ahead of site-packages. Airflow's task SDK 1.3
    (``airflow/sdk/plugins_manager.py:87``, ``return`` where ``continue`` is meant; fixed
    upstream in apache/airflow#72253) stops registering plugins at the first duplicate
    name, so OpenLineage's listener never reached the task runner: under ``dag.test()``
    only the DAG run's events (core's plugin manager skips duplicates) were emitted.
    ``tests`` is imported already; ``hpcgate`` and the provider come from the editable
    install's finder.
    """
    root = Path(__file__).resolve().parents[2]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]


def main() -> int:
    _drop_repo_root()
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_id")
    parser.add_argument("--conf", default="{}")
    parser.add_argument("--fake", action="store_true")
    parser.add_argument("--external-job", action="store_true", help="fake: add a job, pass its id")
    args = parser.parse_args()
    conf = json.loads(args.conf)
    with contextlib.ExitStack() as stack:
        api = None
        if args.fake:
            from airflow_provider_hpc.hooks.hpc import HpcHook
            from tests.provider.realapi import real_api

            api = stack.enter_context(real_api(Path(tempfile.mkdtemp(prefix="hpc-dagrun-"))))
            api.cluster.plan = ["RUNNING", "COMPLETED"]
            _simulate_jobs(api.cluster)
            HpcHook.transport = api.transport
            os.environ["AIRFLOW_CONN_HPC_DEFAULT"] = json.dumps(
                {"conn_type": "hpc", "host": api.url, "password": api.token}
            )
            if args.external_job:
                conf["job_id"] = api.add_job("external", plan=["RUNNING", "COMPLETED"]).job_id
        return _run(args.dag_id, conf, api)


def _run(dag_id: str, conf: dict[str, Any], api: RealApi | None) -> int:

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import conf as airflow_conf

    bag = DagBag(dag_folder=airflow_conf.get("core", "dags_folder"))
    if bag.import_errors:
        print(json.dumps({"import_errors": bag.import_errors}))
        return 2
    start = time.monotonic()
    run = bag.dags[dag_id].test(run_conf=conf or None)
    instances = run.get_task_instances()
    outcome = {
        "dag_id": dag_id,
        "run_id": run.run_id,
        "conf": conf,
        "state": str(run.state),
        "seconds": round(time.monotonic() - start, 1),
        "tasks": {_label(ti.task_id, ti.map_index): str(ti.state) for ti in instances},
        "tries": {_label(ti.task_id, ti.map_index): ti.try_number for ti in instances},
        "xcoms": _xcoms(dag_id, run.run_id),
    }
    if api is not None:
        outcome["requests"] = [f"{r.method} {r.url.path}" for r in api.requests]
        outcome["jobs"] = {
            j.job_id: {
                "name": j.name,
                "state": j.state,
                "dependencies": j.description.dependencies if j.description else None,
            }
            for j in api.jobs.values()
        }
    print("DAGRUN " + json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
