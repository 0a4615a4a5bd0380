"""End to end through a real Airflow: scheduler (LocalExecutor), dag-processor, triggerer
and api-server, each its own process in a private AIRFLOW_HOME with the example DAGs,
against the real server and the local site, driven through Airflow's REST API.

- The submit task of ``hpc_submit_and_wait`` defers: the API shows it ``deferred`` with
  ``HpcJobTrigger``, the triggerer runs the trigger (its log), the task resumes in the same
  try (``execute_complete``), the run succeeds and ``sacct`` shows the job COMPLETED.
- Clearing the task while it is deferred makes the triggerer call the trigger's
  ``on_kill``, which cancels the job; so does marking it failed.

Budget: about a minute and a half on 2 cores (the stack is healthy in ~6 s).
"""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.provider.airflow_stack import AirflowStack, airflow_env
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e, pytest.mark.slow]

USER = "hpcuser1"
DAG = "hpc_submit_and_wait"
TRIGGER = "airflow_provider_hpc.triggers.job.HpcJobTrigger"


@pytest.fixture(scope="module")
def alice(api_server: ApiServer) -> Iterator[httpx.Client]:
    with api_server.client(USER) as client:
        yield client


@pytest.fixture(scope="module")
def stack(
    api_server: ApiServer,
    site_env: SiteEnv,
    alice: httpx.Client,
    airflow_home: Callable[[str], Path],
) -> Iterator[AirflowStack]:
    workdir = f"{site_env.scratch(USER)}/airflow-e2e-{uuid.uuid4().hex[:8]}"
    home = airflow_home("airflow-e2e")
    conn = {
        "conn_type": "hpc",
        "host": api_server.url,
        "password": api_server.token(USER, lifetime_seconds=7200),
        "extra": {"system": api_server.system},
    }
    env = airflow_env(
        home,
        conn=conn,
        extra={
            "HPC_SYSTEM": api_server.system,
            "HPC_WORKDIR": workdir,
            "HPC_LOCAL_DIR": str(home / "staging"),
        },
    )
    stack = AirflowStack(env).start()
    try:
        stack.wait_ready(dag_ids=[DAG], timeout=120)
        yield stack
    finally:
        stack.stop()
        alice.delete(f"/filesystem/{api_server.system}/ops/rm", params={"path": workdir})


def job_state(alice: httpx.Client, system: str, job_id: str) -> str:
    response = alice.get(f"/compute/{system}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()["jobs"][0]["status"]["state"]


def wait_job(
    alice: httpx.Client, system: str, job_id: str, states: set[str], stack: AirflowStack
) -> str:
    deadline = time.monotonic() + 60
    while (state := job_state(alice, system, job_id)) not in states:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {state}, not {states}\n{stack.diagnostics()}")
        time.sleep(0.5)
    return state


async def sacct_state(ssh_as: Any, job_id: str) -> str:
    """The job's state in Slurm's accounting, once it is final there."""
    conn = await ssh_as(USER)
    deadline = time.monotonic() + 60
    while True:
        argv = ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"]
        out = str((await conn.run(shlex.join(argv), check=True, timeout=30)).stdout).strip()
        state = out.split()[0] if out else ""
        if state in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"} or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.5)


def trigger_log(stack: AirflowStack, run_id: str, attempt: int) -> str:
    """The log the triggerer wrote for the trigger of one try of ``simulate``."""
    folder = stack.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}" / "task_id=simulate"
    paths = sorted(folder.glob(f"attempt={attempt}.log.trigger.*.log"))
    assert paths, f"no trigger log for try {attempt}\n{stack.diagnostics(DAG, run_id)}"
    return "\n".join(path.read_text(errors="replace") for path in paths)


def wait_deferred_with_job(
    stack: AirflowStack, run_id: str, not_job: str | None = None
) -> tuple[dict[str, Any], str]:
    """Wait until ``simulate`` is deferred to HpcJobTrigger on a running job (not
    ``not_job``) and the triggerer has started polling it; the task instance and job id."""
    deadline = time.monotonic() + 120
    while True:
        ti = stack.wait_task(DAG, run_id, "simulate", {"deferred"}, timeout=120, interval=0.3)
        job_id = str(stack.xcom(DAG, run_id, "simulate", "job_id"))
        log = stack.task_log(DAG, run_id, "simulate")
        if job_id != not_job and f"Job {job_id} on hpcsite is RUNNING" in log:
            assert ti["trigger"]["classpath"] == TRIGGER, ti
            return ti, job_id
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no running job under the trigger\n{stack.diagnostics(DAG, run_id)}"
            )
        time.sleep(0.5)


async def test_deferred_task_resumes_from_the_triggerer(stack, api_server, alice, ssh_as) -> None:
    system = api_server.system
    # 12 one-second steps: the job outlives the scheduler's handling of the deferral
    # (a job that ends within a few seconds of it can hit Airflow's stale-executor-event
    # race, apache/airflow#67287 / #72716, and is then finished by the retry re-attaching).
    run_id = stack.trigger(DAG, {"steps": 12})
    ti, job_id = wait_deferred_with_job(stack, run_id)
    assert ti["try_number"] == 1 and ti["state"] == "deferred"
    assert job_state(alice, system, job_id) in {"PENDING", "RUNNING"}
    # while the job runs the task holds no worker slot: deferred, not running
    pool = stack.pool()
    assert (pool["running_slots"], pool["deferred_slots"], pool["occupied_slots"]) == (0, 1, 0)
    # the "HPC Job" extra link already points at the job
    links = stack.extra_links(DAG, run_id, "simulate")
    assert links["HPC Job (API)"] == f"{api_server.url}/compute/{system}/jobs/{job_id}"
    assert str(links["HPC Job"]).startswith(f"{api_server.url}/job-pages/{system}/{job_id}?")

    run = stack.wait_run(DAG, run_id, timeout=150)
    tis = stack.task_instances(DAG, run_id)
    states = {task: t["state"] for task, t in tis.items()}
    assert run["state"] == "success", f"{states}\n{stack.diagnostics(DAG, run_id)}"
    assert states == {"make_workdir": "success", "simulate": "success", "report": "success"}
    # resumed in the same try: no retry, one try in the history
    assert tis["simulate"]["try_number"] == 1
    assert [t["try_number"] for t in stack.task_tries(DAG, run_id, "simulate")] == [1]
    result = stack.xcom(DAG, run_id, "simulate")
    expected = {"job_id": job_id, "system": system, "state": "COMPLETED", "exit_code": 0}
    assert result.items() >= expected.items()  # plus "jobs" and "accounting"

    # the task log: deferred by the worker, the trigger's lines from the triggerer, resumed
    log = stack.task_log(DAG, run_id, "simulate")
    deferred_at = log.index("Pausing task as DEFERRED")
    fired_at = log.index("Trigger fired event")
    assert f"Job {job_id} on hpcsite is COMPLETED" in log
    assert "Re-attaching" not in log and log.count(f"Submitted job {job_id}") == 1
    assert f"Job {job_id} COMPLETED (exit code 0)" in log and "result=42" in log
    assert deferred_at < fired_at
    # the trigger's own log, written by the triggerer process
    log = trigger_log(stack, run_id, 1)
    assert f"Job {job_id} on hpcsite is RUNNING" in log and "Trigger fired event" in log
    assert f"'job_id': '{job_id}'" in log and "'state': 'COMPLETED'" in log

    assert job_state(alice, system, job_id) == "COMPLETED"
    assert await sacct_state(ssh_as, job_id) == "COMPLETED"


async def test_clearing_or_failing_a_deferred_task_cancels_its_job(
    stack, api_server, alice, ssh_as
) -> None:
    system = api_server.system
    run_id = stack.trigger(DAG, {"steps": 300})

    # cleared while deferred: the triggerer calls the trigger's on_kill -> job cancelled
    _, first = wait_deferred_with_job(stack, run_id)
    stack.clear_task(DAG, run_id, "simulate")
    assert wait_job(alice, system, first, {"CANCELLED"}, stack) == "CANCELLED"

    # the cleared task runs again in a new try group: a new job, deferred again. (Airflow
    # 3.3's resume race, apache/airflow#67287, may fail a try "externally" and retry it:
    # a retry stays in the group and re-attaches, so the try number can exceed 2.)
    ti, second = wait_deferred_with_job(stack, run_id, not_job=first)
    assert ti["try_number"] >= 2 and second != first
    # marked failed while deferred: cancelled too
    stack.set_task_state(DAG, run_id, "simulate", "failed")
    assert wait_job(alice, system, second, {"CANCELLED"}, stack) == "CANCELLED"

    run = stack.wait_run(DAG, run_id, timeout=90)
    assert run["state"] == "failed"
    states = {task: t["state"] for task, t in stack.task_instances(DAG, run_id).items()}
    assert states == {"make_workdir": "success", "simulate": "failed", "report": "upstream_failed"}
    # each try's trigger was killed by the user action and cancelled its job in on_kill.
    # After the clear, two cancellations race: the triggerer's kill of the first try's
    # trigger (on_kill) and the new try, which cancels the previous group's job when it
    # starts (about a second later); when the new try wins, the first trigger sees its job
    # CANCELLED on the event stream before the kill arrives. Either way the job is cancelled.
    log = trigger_log(stack, run_id, 1)
    killed = "Trigger cancelled by user action, invoking on_kill" in log
    if killed:
        assert f"Cancelled job {first} on hpcsite" in log, log
    else:
        assert f"Job {first} on hpcsite is CANCELLED" in log, log
    log = trigger_log(stack, run_id, ti["try_number"])  # the try that deferred on `second`
    assert "Trigger cancelled by user action, invoking on_kill" in log, log
    assert f"Cancelled job {second} on hpcsite" in log, log
    for job_id in (first, second):
        assert await sacct_state(ssh_as, job_id) == "CANCELLED"
    names = [
        alice.get(f"/compute/{system}/jobs/{job_id}").json()["jobs"][0]["name"]
        for job_id in (first, second)
    ]
    assert names[0].endswith("-g1") and names[1].endswith("-g2")
