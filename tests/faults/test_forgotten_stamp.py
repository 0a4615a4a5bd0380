"""Exactly-once after the controller forgot the job (issue 10, item 1), end to end.

The private site's controller forgets an ended job after ``MIN_JOB_AGE`` (5 s, so
within ~15 s with Slurm's purge cadence). A keyed submission is killed (SIGKILL)
between sbatch and recording its job id (``tests.faults`` stalls there), so the key
stays pending; once the controller no longer knows the job, the server is started
again and the client retries with its key: only accounting (``sacct``, with the
stamp in the job's comment) can say the job exists. The retry must answer the
first job, and accounting must hold exactly one job of that name. While slurmdbd
is down, such a retry must not submit a second job either.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.faults import FAULT_PREFIX
from tests.faults.drill import record_result, step
from tests.private_site import MIN_JOB_AGE, PrivateServer, PrivateSite

pytestmark = [pytest.mark.site, pytest.mark.slow]


def body(site: PrivateSite, name: str) -> dict[str, Any]:
    return {
        "job": {
            "name": name,
            "workingDirectory": site.env.scratch("hpcuser1"),
            "script": "#!/bin/bash\ntrue\n",
            "standardOutput": "/dev/null",
        }
    }


def post(server: PrivateServer, payload: dict[str, Any], key: str, timeout: float = 30):
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=timeout) as client:
        return client.post(
            f"/compute/{server.system}/jobs", json=payload, headers={"Idempotency-Key": key}
        )


def controller_ids(site: PrivateSite, name: str) -> list[str]:
    out = site.slurm("squeue", "-h", "-t", "all", "-n", name, "-o", "%i", check=False)
    return out.stdout.split()


def accounting_ids(site: PrivateSite, name: str) -> list[str]:
    out = site.slurm(
        "sacct", "-X", "-n", "-a", "-P", "-S", "now-1hours", f"--name={name}", "-o", "JobID",
        check=False,
    )  # fmt: skip
    return out.stdout.split()


async def until(predicate: Any, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` (run in a thread) holds; fails after ``timeout``."""
    start = time.monotonic()
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() - start < timeout, f"{what} not within {timeout} s"
        await asyncio.sleep(0.2)
    return time.monotonic() - start


@dataclass
class Forgotten:
    """Keys left pending by a crash, whose jobs the controller has since forgotten."""

    server: PrivateServer
    keys: dict[str, str]  # job name -> Idempotency-Key
    first: dict[str, str]  # job name -> the job sbatch created
    forgot_after: float


@pytest.fixture(scope="module")
async def forgotten(private_site: PrivateSite, drill_server: PrivateServer) -> Forgotten:
    """One crash (SIGKILL between sbatch and recording) leaves two keys pending; then
    the controller forgets both jobs; then the server is started again."""
    server = drill_server
    if server.process.poll() is not None:
        server.restart()
    tag = uuid.uuid4().hex[:8]
    keys = {f"forgot-{tag}-{n}": f"{FAULT_PREFIX}{uuid.uuid4()}" for n in ("up", "down")}
    posts = [
        asyncio.create_task(asyncio.to_thread(post, server, body(private_site, n), k))
        for n, k in keys.items()
    ]
    first: dict[str, str] = {}

    def both_submitted() -> bool:
        for name in keys:
            ids = controller_ids(private_site, name)
            if ids:
                first[name] = ids[0]
        return len(first) == len(keys)

    await until(both_submitted, 30, "both sbatch calls")
    await step(server.kill)  # inside the stall: sbatch done, job id not recorded
    for task in posts:
        with pytest.raises(httpx.TransportError):
            await task
    forgot = await until(
        lambda: not any(controller_ids(private_site, n) for n in keys),
        MIN_JOB_AGE + 120,
        "the controller forgetting the jobs",
    )
    for name in keys:
        await until(lambda n=name: accounting_ids(private_site, n), 30, f"{name} in sacct")
    await step(server.restart)
    return Forgotten(server, keys, first, forgot)


async def test_a_pending_key_finds_its_job_after_the_controller_forgot(
    private_site: PrivateSite, forgotten: Forgotten
) -> None:
    name = next(n for n in forgotten.keys if n.endswith("-up"))
    key = forgotten.keys[name]
    retry = await asyncio.to_thread(post, forgotten.server, body(private_site, name), key)
    record_result(
        {
            "drill": "retry-after-controller-forgot",
            "controller_forgot_after_seconds": round(forgotten.forgot_after, 1),
            "retry_status": retry.status_code,
            "replayed": retry.headers.get("Idempotent-Replayed") == "true",
        }
    )
    assert retry.status_code == 201, retry.text
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.json()["jobId"] == forgotten.first[name]
    assert accounting_ids(private_site, name) == [forgotten.first[name]]


async def test_no_second_job_while_accounting_is_down(
    private_site: PrivateSite, forgotten: Forgotten
) -> None:
    name = next(n for n in forgotten.keys if n.endswith("-down"))
    key, first = forgotten.keys[name], forgotten.first[name]
    answers: list[httpx.Response] = []
    with private_site.stopped("slurmdbd"):
        answers.append(
            await asyncio.to_thread(post, forgotten.server, body(private_site, name), key)
        )
    answers.append(await asyncio.to_thread(post, forgotten.server, body(private_site, name), key))
    given = {a.json()["jobId"] for a in answers if a.status_code == 201}
    # let accounting learn of every job the answers named (a duplicate included)
    await until(lambda: given <= set(accounting_ids(private_site, name)), 60, "accounting")
    record_result(
        {
            "drill": "retry-after-controller-forgot-accounting-down",
            "statuses": [a.status_code for a in answers],
            "jobs_named": accounting_ids(private_site, name),
        }
    )
    assert accounting_ids(private_site, name) == [first]  # no second job
    assert answers[0].status_code == 503, answers[0].text  # unknown, not "none"
    assert answers[1].status_code == 201 and answers[1].json()["jobId"] == first
