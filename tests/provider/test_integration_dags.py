"""Every example DAG with ``dag.test()`` against the real server and the real local site.

One module-scoped batch runs the DAGs concurrently (each ``dag.test()`` in its own
process and AIRFLOW_HOME with a copy of the session's migrated sqlite database), as
``hpcuser1`` with a minted token in ``AIRFLOW_CONN_HPC_DEFAULT``. ``dag.test()`` runs the
tasks and the triggers in line, deferral included. The tests then check what really
happened: the jobs in the API and in ``sacct``, the files on the cluster and on the
worker, their checksums, the order Slurm ran the chained jobs in.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import submit
from tests.provider.airflow_stack import airflow_env, dagrun_outcome, start_dagrun
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e, pytest.mark.slow]

USER = "hpcuser1"


@pytest.fixture(scope="module")
def alice(api_server: ApiServer) -> Iterator[httpx.Client]:
    with api_server.client(USER) as client:
        yield client


@pytest.fixture(scope="module")
def workdir(site_env: SiteEnv, api_server: ApiServer, alice: httpx.Client) -> Iterator[str]:
    """The DAGs' base directory on the cluster (removed afterwards)."""
    path = f"{site_env.scratch(USER)}/airflow-it-{uuid.uuid4().hex[:8]}"
    yield path
    alice.delete(f"/filesystem/{api_server.system}/ops/rm", params={"path": path})


@pytest.fixture(scope="module")
def external_jobs(api_server: ApiServer, alice: httpx.Client, site_env: SiteEnv) -> dict[str, str]:
    """Jobs submitted outside Airflow (through the API) for the sensor DAG: one that
    completes and one that fails, both still running when the sensor starts."""
    scratch = site_env.scratch(USER)
    return {
        "ok": submit(
            alice,
            api_server.system,
            {
                "name": "external-ok",
                "workingDirectory": scratch,
                "script": "#!/bin/bash\nsleep 4\necho external done\n",
            },
        ),
        "failing": submit(
            alice,
            api_server.system,
            {
                "name": "external-failing",
                "workingDirectory": scratch,
                "script": "#!/bin/bash\nsleep 3\nexit 3\n",
            },
        ),
    }


@pytest.fixture(scope="module")
def runs(
    api_server: ApiServer,
    airflow_home: Callable[[str], Path],
    workdir: str,
    external_jobs: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Each example DAG (the sensor DAG twice) once, concurrently, against the server."""
    conn = {
        "conn_type": "hpc",
        "host": api_server.url,
        "password": api_server.token(USER, lifetime_seconds=7200),
        "extra": {"system": api_server.system},
    }
    plan = {
        "submit_and_wait": ("hpc_submit_and_wait", {}),
        "stage_array_stage": ("hpc_stage_array_stage", {}),
        "job_chain": ("hpc_job_chain", {}),
        "sensor_ok": ("hpc_sensor_external_job", {"job_id": external_jobs["ok"]}),
        "sensor_failing": ("hpc_sensor_external_job", {"job_id": external_jobs["failing"]}),
    }
    running = {}
    for name, (dag_id, conf) in plan.items():
        home = airflow_home(name)
        env = airflow_env(
            home,
            conn=conn,
            extra={
                "HPC_SYSTEM": api_server.system,
                "HPC_WORKDIR": workdir,
                "HPC_LOCAL_DIR": str(home / "staging"),
            },
        )
        running[name] = start_dagrun(dag_id, env, conf=conf)
    return {name: dagrun_outcome(process, timeout=240) for name, process in running.items()}


# ---------------------------------------------------------------------- helpers


def run_dir(workdir: str, outcome: dict[str, Any]) -> str:
    """The run's directory on the cluster (the DAGs' ``RUN_DIR``)."""
    return f"{workdir}/{outcome['dag_id']}/{re.sub(r'[^A-Za-z0-9_.-]+', '-', outcome['run_id'])}"


def api_job(alice: httpx.Client, system: str, job_id: str) -> dict[str, Any]:
    response = alice.get(f"/compute/{system}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    [job] = response.json()["jobs"]
    return job


async def remote(ssh_as: Any, *argv: str) -> str:
    conn = await ssh_as(USER)
    return str((await conn.run(shlex.join(argv), check=True, timeout=60)).stdout)


async def sacct(ssh_as: Any, *job_ids: str, fields: str = "JobID,State,ExitCode") -> list[dict]:
    """sacct's allocation rows (one per array task), polled until all are final and
    every requested field is filled in (accounting fills some, e.g. Partition, late)."""
    names = fields.split(",")
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
    deadline = time.monotonic() + 60
    while True:
        out = await remote(ssh_as, "sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", fields)
        rows = [dict(zip(names, line.split("|"), strict=True)) for line in out.splitlines() if line]
        settled = all(r["State"].split()[0] in final and all(r.values()) for r in rows)
        if rows and settled:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"sacct rows of {job_ids} not final: {rows}")
        await asyncio.sleep(0.5)


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------- the DAGs


async def test_submit_and_wait(runs, api_server, alice, ssh_as, workdir) -> None:
    outcome = runs["submit_and_wait"]
    assert outcome["state"] == "success", outcome["tasks"]
    assert set(outcome["tasks"].values()) == {"success"}
    assert outcome["tries"]["simulate"] == 1
    result = outcome["xcoms"]["simulate"]["return_value"]
    job_id = str(result["job_id"])
    expected = {"job_id": job_id, "system": api_server.system, "state": "COMPLETED", "exit_code": 0}
    assert result.items() >= expected.items()  # plus "jobs" and "accounting"
    assert outcome["xcoms"]["report"]["return_value"] == "COMPLETED"
    assert str(outcome["xcoms"]["simulate"]["job_url"]).endswith(f"/compute/hpcsite/jobs/{job_id}")

    # the job, as the API and Slurm's accounting see it
    job = api_job(alice, api_server.system, job_id)
    assert job["status"]["state"] == "COMPLETED" and job["status"]["exitCode"] == 0
    assert job["name"].startswith("simulate-") and job["name"].endswith("-g1")
    assert job["workingDirectory"] == run_dir(workdir, outcome)
    assert [(r["JobID"], r["State"], r["ExitCode"]) for r in await sacct(ssh_as, job_id)] == [
        (job_id, "COMPLETED", "0:0")
    ]
    # exactly one job with the task instance's name
    listed = alice.get(
        f"/compute/{api_server.system}/jobs", params={"name": job["name"], "time_window": "1h"}
    ).json()["jobs"]
    assert [j["jobId"] for j in listed] == [job_id]

    # deferred, the trigger ran in line, and the job's stdout reached the task log
    log = outcome["log"]
    assert "Pausing task as DEFERRED" in log and "running trigger in line" in log
    assert f"Job {job_id} on hpcsite is COMPLETED" in log
    assert "result=42" in log and "step 3" in log
    stdout = await remote(ssh_as, "cat", f"{run_dir(workdir, outcome)}/slurm-{job_id}.out")
    assert stdout.splitlines()[1:] == ["step 1", "step 2", "step 3", "result=42"]
    assert outcome["run_id"] in stdout.splitlines()[0]


async def test_stage_in_array_stage_out(runs, api_server, alice, ssh_as, workdir) -> None:
    outcome = runs["stage_array_stage"]
    assert outcome["state"] == "success", outcome["tasks"]
    assert set(outcome["tasks"].values()) == {"success"}
    xcoms = outcome["xcoms"]
    assert xcoms["total"]["return_value"] == 1 + 4 + 9 + 16
    remote_dir = run_dir(workdir, outcome)

    # stage in: the worker's file arrived intact
    staged_in = xcoms["stage_in"]["return_value"]
    assert staged_in["remote_path"] == f"{remote_dir}/input.txt"
    assert await remote(ssh_as, "cat", staged_in["remote_path"]) == "1\n2\n3\n4\n"
    assert staged_in["sha256"] == hashlib.sha256(b"1\n2\n3\n4\n").hexdigest()

    # the array: one summary entry in the API whose tasks all completed, four sacct rows
    job_id = str(xcoms["square_array"]["return_value"]["job_id"])
    job = api_job(alice, api_server.system, job_id)
    assert job["status"]["state"] == "COMPLETED"
    assert sorted(t["id"] for t in job["tasks"]) == [f"{job_id}_{i}" for i in range(4)]
    assert {t["status"]["state"] for t in job["tasks"]} == {"COMPLETED"}
    rows = await sacct(ssh_as, job_id)
    assert sorted((r["JobID"], r["State"]) for r in rows) == [
        (f"{job_id}_{i}", "COMPLETED") for i in range(4)
    ]

    # stage out: each task's output downloaded, content and checksums equal on both ends
    remote_sums = await remote(
        ssh_as, "sha256sum", *(f"{remote_dir}/out_{i}.txt" for i in range(4))
    )
    remote_by_name = {
        Path(line.split()[1]).name: line.split()[0] for line in remote_sums.splitlines()
    }
    for i in range(4):
        staged = xcoms[f"stage_out[{i}]"]["return_value"]
        local = staged["local_path"]
        assert Path(local).read_text() == f"{(i + 1) ** 2}\n"
        assert sha256(local) == staged["sha256"] == remote_by_name[f"out_{i}.txt"]
        assert not list(Path(local).parent.glob(".*.part"))  # atomic: no partial copies left


async def test_job_chain_runs_in_dependency_order(runs, api_server, alice, ssh_as, workdir) -> None:
    outcome = runs["job_chain"]
    assert outcome["state"] == "success", outcome["tasks"]
    assert set(outcome["tasks"].values()) == {"success"}
    xcoms = outcome["xcoms"]
    ids = {
        task: str(xcoms[task]["return_value"]["job_id"])
        for task in ("prepare", "simulate", "analyse")
    }
    # submit-only tasks return at once; only the last one waits
    assert xcoms["prepare"]["return_value"]["state"] == "SUBMITTED"
    assert xcoms["simulate"]["return_value"]["state"] == "SUBMITTED"
    assert xcoms["analyse"]["return_value"]["state"] == "COMPLETED"

    rows = await sacct(ssh_as, *ids.values(), fields="JobID,JobName,State,Start,End")
    by_id = {r["JobID"]: r for r in rows}
    assert {by_id[j]["State"] for j in ids.values()} == {"COMPLETED"}
    prepare, simulate, analyse = (by_id[ids[t]] for t in ("prepare", "simulate", "analyse"))
    assert prepare["End"] <= simulate["Start"] and simulate["End"] <= analyse["Start"]
    for task, job_id in ids.items():
        assert by_id[job_id]["JobName"].startswith(f"{task}-")

    remote_dir = run_dir(workdir, outcome)
    assert await remote(ssh_as, "cat", f"{remote_dir}/answer.txt") == "answer: 42\n"
    assert "answer: 42" in outcome["log"]  # the analyse job's stdout tail in the task log

    # cp and mv ran as data-movement jobs on the xfer partition
    assert await remote(ssh_as, "cat", f"{remote_dir}/results/answer.txt") == "answer: 42\n"
    assert await remote(ssh_as, "cat", f"{remote_dir}/results/simulated.txt") == "42\n"
    assert "simulated.txt" not in (await remote(ssh_as, "ls", remote_dir)).split()
    moves = {
        task: str(xcoms[task]["return_value"]["job_id"])
        for task in ("publish_answer", "keep_intermediate")
    }
    rows = await sacct(ssh_as, *moves.values(), fields="JobID,Partition,State")
    assert sorted((r["Partition"], r["State"]) for r in rows) == [("xfer", "COMPLETED")] * 2


async def test_sensor_waits_for_an_external_job(runs, api_server, alice, external_jobs) -> None:
    outcome = runs["sensor_ok"]
    assert outcome["state"] == "success", outcome["tasks"]
    assert outcome["tasks"] == {"wait_for_job": "success", "summary": "success"}
    job_id = external_jobs["ok"]
    assert f"external job {job_id} COMPLETED (exit code 0)" in outcome["log"]
    job = api_job(alice, api_server.system, job_id)
    assert job["status"]["state"] == "COMPLETED"  # waited for, not cancelled
    assert "Submitted job" not in outcome["log"]


async def test_sensor_fails_with_a_failed_external_job(
    runs, api_server, alice, external_jobs
) -> None:
    outcome = runs["sensor_failing"]
    assert outcome["state"] == "failed"
    assert outcome["tasks"] == {"wait_for_job": "failed", "summary": "upstream_failed"}
    job_id = external_jobs["failing"]
    assert f"job {job_id} ended FAILED (exit code 3)" in outcome["log"]
    job = api_job(alice, api_server.system, job_id)
    assert (job["status"]["state"], job["status"]["exitCode"]) == ("FAILED", 3)
