"""Failure-aware resubmission, accounting and lineage on a real site, in a real task run.

The node is set DOWN under a running job, so this runs on the private second site
(``private_site``; never the shared one, where other tests' jobs would die) with its own
``hpcgate serve``. The example DAG ``hpc_resilient_job`` runs with ``dag.test()`` in a
subprocess (the real task runner, deferral and triggers in line) with OpenLineage's file
transport configured.

What Slurm 22.05 does when a node goes DOWN under a batch job (measured on this site,
``JobRequeue=1``, Slurm's default): a requeueable job is requeued by Slurm itself, keeps
its id and shows ``PENDING`` (reason ``BeginTime``), then runs again about two minutes
later; the provider just keeps waiting. A job submitted with ``--no-requeue`` (or on a
site with ``JobRequeue=0``) ends ``NODE_FAIL``: that is the provider's case, tested here.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.private_site import PrivateServer, PrivateSite
from tests.provider.airflow_stack import airflow_env, dagrun_outcome, start_dagrun

pytestmark = [pytest.mark.site, pytest.mark.e2e, pytest.mark.slow]

USER = "hpcuser1"
NODE = "vm"
DAG = "hpc_resilient_job"


@pytest.fixture
def server(
    private_server: Callable[..., PrivateServer], tmp_path_factory: pytest.TempPathFactory
) -> PrivateServer:
    return private_server(tmp_path_factory.mktemp("hpcgate-resilient"))


@pytest.fixture
def client(server: PrivateServer) -> Iterator[httpx.Client]:
    with server.client(USER) as client:
        yield client


@pytest.fixture
def node(private_site: PrivateSite) -> Iterator[Callable[[str], None]]:
    """``node("down")`` / ``node("resume")`` on the private site; resumed after the test."""

    def update(state: str) -> None:
        argv = ["scontrol", "update", f"nodename={NODE}", f"state={state}"]
        if state == "down":
            argv.append("reason=hpcgate-resubmission-test")
        # "resume" of a node that came back already (ReturnToService=2) is refused: fine
        private_site.slurm(*argv, check=state == "down")

    yield update
    update("resume")


def our_jobs(client: httpx.Client, system: str) -> list[dict[str, Any]]:
    response = client.get(f"/compute/{system}/jobs")
    assert response.status_code == 200, response.text
    jobs = response.json().get("jobs") or []
    return [job for job in jobs if str(job.get("name", "")).startswith("resilient-")]


def wait_job(
    client: httpx.Client, system: str, states: set[str], job_id: str | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for job in our_jobs(client, system):
            if job_id in (None, job["jobId"]) and job["status"]["state"] in states:
                return job
        time.sleep(0.5)
    raise AssertionError(f"no job {job_id or ''} in {states}: {our_jobs(client, system)}")


def sacct(site: PrivateSite, job_id: str, fields: str) -> list[str]:
    out = site.slurm("sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields).stdout
    return out.strip().splitlines()[-1].split("|")


def test_node_failure_is_resubmitted_once_and_the_task_succeeds_in_one_try(
    private_site: PrivateSite,
    server: PrivateServer,
    client: httpx.Client,
    node: Callable[[str], None],
    airflow_home: Callable[[str], Path],
) -> None:
    system = server.system
    workdir = f"{private_site.env.scratch(USER)}/resilient-{uuid.uuid4().hex[:8]}"
    home = airflow_home("resilient")
    lineage = home / "openlineage.jsonl"
    conn = {
        "conn_type": "hpc",
        "host": server.url,
        "password": server.token(USER, lifetime_seconds=3600),
        "extra": {"system": system},
    }
    env = airflow_env(
        home,
        conn=conn,
        extra={
            "HPC_SYSTEM": system,
            "HPC_WORKDIR": workdir,
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(lineage), "append": True}
            ),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "hpcgate-tests",
            # the task's events are emitted by a child the runner waits for at most this
            # long (10 s by default, which a busy 2-core machine can overrun: event lost)
            "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "120",
        },
    )
    process = start_dagrun(DAG, env, conf={"steps": 45, "no_requeue": True})
    try:
        first = wait_job(client, system, {"RUNNING"})["jobId"]
        node("down")
        failed = wait_job(client, system, {"NODE_FAIL"}, first)
        node("resume")
        outcome = dagrun_outcome(process, timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        client.delete(f"/filesystem/{system}/ops/rm", params={"path": workdir})
    log = outcome["log"]
    assert failed["status"]["state"] == "NODE_FAIL"
    assert outcome["state"] == "success", (outcome["tasks"], log[-5000:])
    assert outcome["tries"]["simulate"] == 1  # no Airflow retry was used

    result = outcome["xcoms"]["simulate"]["return_value"]
    jobs = result["jobs"]
    assert [(job["job_id"], job["state"], job["action"]) for job in jobs] == [
        (first, "NODE_FAIL", "resubmit"),
        (result["job_id"], "COMPLETED", "complete"),
    ]
    second = result["job_id"]
    assert second != first and result["state"] == "COMPLETED"
    # the task log says what happened and why
    assert f"Pre-flight on {system}" in log
    assert f"Job {first} ended NODE_FAIL: NODE_FAIL" in log and "machine failure" in log
    assert "Resubmitting (1 of at most 2), without using an Airflow retry" in log
    assert f"Job {second} COMPLETED (exit code 0)" in log

    # Slurm agrees: one NODE_FAIL, one COMPLETED, the same deterministic name
    assert sacct(private_site, first, "State")[0] == "NODE_FAIL"
    state, name_second, elapsed, cpus = sacct(
        private_site, second, "State,JobName%200,ElapsedRaw,AllocCPUS"
    )
    assert state == "COMPLETED"
    assert sacct(private_site, first, "JobName%200")[0] == name_second

    # accounting of the final job in the result, as sacct has it
    accounting = result["accounting"]
    assert accounting is not None and accounting["job_id"] == second
    assert accounting["state"] == "COMPLETED"
    assert accounting["elapsed_seconds"] == int(elapsed) >= 45
    assert accounting["alloc_cpus"] == int(cpus)
    assert f"Accounting of job {second}: COMPLETED" in log
    assert jobs[0]["accounting"]["state"] == "NODE_FAIL"

    # lineage: the COMPLETE event of the task carries both jobs and the output dataset
    # (dag.test() emits task events since tests.provider.dagrun keeps the repository's
    # hpcgate.egg-info off sys.path: see its _drop_repo_root)
    events = [json.loads(line) for line in lineage.read_text().splitlines() if line.strip()]
    complete = [
        e
        for e in events
        if e.get("eventType") == "COMPLETE" and e["job"]["name"] == f"{DAG}.simulate"
    ]
    assert complete, [(e.get("eventType"), e["job"]["name"]) for e in events]
    facets = complete[-1]["run"]["facets"]
    assert [job["job_id"] for job in facets["hpc_job"]["jobs"]] == [first, second]
    assert [job["action"] for job in facets["hpc_job"]["jobs"]] == ["resubmit", "complete"]
    assert facets["externalQuery"]["externalQueryId"] == second
    outputs = complete[-1]["outputs"]
    assert [(o["namespace"], o["name"].rsplit("/", 1)[-1]) for o in outputs] == [
        (f"hpc://{system}", "result.txt")
    ]
    assert outputs[0]["name"].startswith(f"{workdir}/{DAG}/")
