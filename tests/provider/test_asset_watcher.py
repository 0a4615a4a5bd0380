"""DAGs started by cluster events, through a real Airflow (scheduler, dag-processor,
triggerer, api-server) against the real server and site.

A job submitted over the API (not by Airflow) whose name matches the watcher's pattern
ends COMPLETED: the asset watched by ``HpcJobEventTrigger`` gets one event and the
asset-scheduled DAG runs once; a job with another name, or one that FAILED, starts
nothing. The triggerer is then killed (SIGKILL, no goodbye), a matching job ends while
it is down, and the new triggerer resumes from the stored cursor: the DAG runs once
for that job and never again for the first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import submit, wait_final
from tests.provider.airflow_stack import AIRFLOW, DAGS, AirflowStack, airflow_env
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e, pytest.mark.slow]

USER = "hpcuser1"
DAG = "hpc_asset_watcher"


@pytest.fixture(scope="module")
def tag() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def alice(api_server: ApiServer) -> Iterator[httpx.Client]:
    with api_server.client(USER) as client:
        yield client


@pytest.fixture(scope="module")
def stack(
    api_server: ApiServer,
    tag: str,
    airflow_home: Callable[[str], Path],
) -> Iterator[AirflowStack]:
    home = airflow_home("airflow-assets")
    dags = home / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "hpc_asset_watcher.py", dags)
    conn = {
        "conn_type": "hpc",
        "host": api_server.url,
        "password": api_server.token(USER, lifetime_seconds=7200),
        "extra": {"system": api_server.system},
    }
    env = airflow_env(
        home,
        conn=conn,
        dags_folder=dags,
        extra={"HPC_SYSTEM": api_server.system, "HPC_ASSET_JOB_PATTERN": f"asset-{tag}-*"},
    )
    stack = AirflowStack(env).start()
    try:
        stack.wait_ready(dag_ids=[DAG], timeout=120)
        yield stack
    finally:
        stack.stop()


def sse_streams(api_server: ApiServer) -> float:
    """Open event streams on the server (its metrics)."""
    text = httpx.get(f"{api_server.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hpcgate_sse_subscribers")
    )


def wait_stream(api_server: ApiServer, stack: AirflowStack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sse_streams(api_server) < 1:
        if time.monotonic() > deadline:
            raise AssertionError(f"the trigger never connected\n{stack.diagnostics()}")
        time.sleep(0.5)


def runs(stack: AirflowStack) -> list[dict]:  # type: ignore[type-arg]
    answer = stack.client.get(f"/api/v2/dags/{DAG}/dagRuns", params={"order_by": "logical_date"})
    assert answer.status_code == 200, answer.text
    return answer.json()["dag_runs"]  # type: ignore[no-any-return]


def wait_runs(stack: AirflowStack, count: int, timeout: float = 180) -> list[dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while len(found := runs(stack)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} runs, not {count}\n{stack.diagnostics(DAG)}")
        time.sleep(1)
    return found


def started_by(stack: AirflowStack, run: dict) -> list[str]:  # type: ignore[type-arg]
    """The job ids the run's task returned (from its triggering asset events)."""
    done = stack.wait_run(DAG, run["dag_run_id"], timeout=180)
    assert done["state"] == "success", stack.diagnostics(DAG, run["dag_run_id"])
    return list(stack.xcom(DAG, run["dag_run_id"], "on_job_end"))


def job(site_env: SiteEnv, name: str, script: str = "sleep 2") -> dict[str, object]:
    return {
        "name": name,
        "workingDirectory": site_env.scratch(USER),
        "standardOutput": "/dev/null",
        "script": f"#!/bin/bash\n{script}\n",
    }


def restart_triggerer(stack: AirflowStack, between: Callable[[], None]) -> None:
    """SIGKILL the triggerer's process group, run ``between``, start a new triggerer."""
    old = stack.processes["triggerer"]
    os.killpg(old.pid, signal.SIGKILL)
    old.wait(timeout=30)
    between()
    with (stack.log_dir / "triggerer.log").open("ab") as log:
        stack.processes["triggerer"] = subprocess.Popen(
            [AIRFLOW, "triggerer"],
            env=stack.env,
            cwd=stack.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_job_end_runs_the_asset_dag_once_across_a_triggerer_restart(
    stack: AirflowStack, api_server: ApiServer, alice: httpx.Client, site_env: SiteEnv, tag: str
) -> None:
    system = api_server.system
    wait_stream(api_server, stack)
    # a matching job, one with another name and a matching one that fails
    first = submit(alice, system, job(site_env, f"asset-{tag}-first"))
    other = submit(alice, system, job(site_env, f"other-{tag}"))
    failed = submit(alice, system, job(site_env, f"asset-{tag}-failed", "exit 3"))
    for job_id in (first, other, failed):
        wait_final(alice, system, job_id)
    [run] = wait_runs(stack, 1)
    assert started_by(stack, run) == [first]

    # the triggerer dies; a matching job ends while none runs; a new one starts
    def while_down() -> None:
        deadline = time.monotonic() + 30
        while sse_streams(api_server) > 0:  # the server saw the stream go
            assert time.monotonic() < deadline, "the dead triggerer's stream stays open"
            time.sleep(0.5)
        second_id.append(submit(alice, system, job(site_env, f"asset-{tag}-second", "sleep 1")))
        wait_final(alice, system, second_id[0])

    second_id: list[str] = []
    restart_triggerer(stack, while_down)
    found = wait_runs(stack, 2)
    assert started_by(stack, found[-1]) == second_id
    time.sleep(20)  # nothing replayed: the first job does not start another run
    assert len(runs(stack)) == 2, stack.diagnostics(DAG)
    assert "cursor in memory" not in stack.component_log("triggerer")  # the state store held it
