"""Exactly-once submission with Idempotency-Key, through a real server and Slurm."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from hpcgate.compute.idempotency import KeyScope, stamp
from tests.events.conftest import FAULT_DELAY, FAULT_PREFIX, events_config, remote
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]


def job_body(site_env: SiteEnv, name: str, user: str = "hpcuser1", seconds: int = 1) -> dict:
    return {
        "job": {
            "name": name,
            "workingDirectory": site_env.scratch(user),
            "script": f"#!/bin/bash\nsleep {seconds}\n",
            "standardOutput": "/dev/null",
        }
    }


async def jobs_with_stamp(ssh_as, user: str, comment: str) -> list[str]:
    """squeue's view: the user's jobs carrying ``comment``."""
    out = await remote(ssh_as, user, "squeue", "-h", "-t", "all", "--me", "-O", "JobID:|,Comment:|")
    return [line.split("|")[0] for line in out.splitlines() if line.split("|")[1:2] == [comment]]


async def jobs_named(ssh_as, user: str, name: str) -> list[str]:
    """sacct's view: the user's jobs called ``name`` in the last hour (accounting
    learns of a job a moment after sbatch: wait for it)."""
    for _ in range(40):
        out = await remote(
            ssh_as,
            user,
            "sacct",
            "-n",
            "-X",
            "-P",
            f"--name={name}",
            "-S",
            "now-3600",
            "-o",
            "JobID",
        )
        if out.split():
            return out.split()
        await asyncio.sleep(0.25)
    return []


def post(server: ApiServer, body: dict, key: str, user: str = "hpcuser1", timeout: float = 30):
    with httpx.Client(base_url=server.url, headers=server.headers(user), timeout=timeout) as c:
        return c.post(f"/compute/{server.system}/jobs", json=body, headers={"Idempotency-Key": key})


async def test_connection_killed_after_sbatch_retry_gets_same_job(
    events_server: ApiServer, site_env: SiteEnv, ssh_as
) -> None:
    """The server records the job, then stalls before answering; the client gives
    up (its connection dies); the retry gets the same job."""
    name = f"idem-{uuid.uuid4().hex[:8]}"
    key = f"{FAULT_PREFIX}{uuid.uuid4()}"
    body = job_body(site_env, name)
    with pytest.raises(httpx.ReadTimeout):  # gives up while the response is delayed
        await asyncio.to_thread(post, events_server, body, key, timeout=FAULT_DELAY + 1)
    retry = await asyncio.to_thread(post, events_server, body, key)
    assert retry.status_code == 201, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    job_id = retry.json()["jobId"]
    comment = stamp(KeyScope(events_server.system, "hpcuser1", key))
    assert await jobs_with_stamp(ssh_as, "hpcuser1", comment) == [job_id]
    assert await jobs_named(ssh_as, "hpcuser1", name) == [job_id]
    # and again, later: the same answer
    again = await asyncio.to_thread(post, events_server, body, key)
    assert (again.status_code, again.json()) == (201, {"jobId": job_id})


async def test_retry_while_first_attempt_still_records_coalesces(
    events_server: ApiServer, site_env: SiteEnv, ssh_as
) -> None:
    """The client gives up between sbatch and the record; its retry joins the
    submission still running on the server."""
    name = f"idem-{uuid.uuid4().hex[:8]}"
    key = f"{FAULT_PREFIX}{uuid.uuid4()}"
    body = job_body(site_env, name)
    with pytest.raises(httpx.ReadTimeout):
        await asyncio.to_thread(post, events_server, body, key, timeout=FAULT_DELAY / 2)
    retry = await asyncio.to_thread(post, events_server, body, key)
    assert retry.status_code == 201, retry.text
    job_id = retry.json()["jobId"]
    comment = stamp(KeyScope(events_server.system, "hpcuser1", key))
    assert await jobs_with_stamp(ssh_as, "hpcuser1", comment) == [job_id]
    assert await jobs_named(ssh_as, "hpcuser1", name) == [job_id]


async def test_server_dies_after_sbatch_retry_finds_job_by_stamp(
    site_env: SiteEnv, tmp_path: Path, ssh_as
) -> None:
    """The server is killed after sbatch, before it recorded the job id: after a
    restart the pending key is looked up in Slurm (by its comment), not resubmitted."""
    name = f"idem-{uuid.uuid4().hex[:8]}"
    key = f"{FAULT_PREFIX}{uuid.uuid4()}"
    body = job_body(site_env, name)
    server = start_server(site_env, tmp_path, **events_config())
    try:
        with pytest.raises(httpx.ReadTimeout):
            await asyncio.to_thread(post, server, body, key, timeout=FAULT_DELAY / 2)
        server.process.kill()  # mid-submission: sbatch ran, the record is pending
        server.process.wait()
        [submitted] = await jobs_named(ssh_as, "hpcuser1", name)
    finally:
        server.stop()
    server = start_server(site_env, tmp_path, **events_config())
    try:
        retry = await asyncio.to_thread(post, server, body, key)
        assert retry.status_code == 201, retry.text
        assert retry.json() == {"jobId": submitted}
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert await jobs_named(ssh_as, "hpcuser1", name) == [submitted]
    finally:
        server.stop()


async def test_same_key_other_body_is_422(events_server: ApiServer, site_env: SiteEnv) -> None:
    key = str(uuid.uuid4())
    first = await asyncio.to_thread(post, events_server, job_body(site_env, "idem-a"), key)
    assert first.status_code == 201, first.text
    other = await asyncio.to_thread(post, events_server, job_body(site_env, "idem-b"), key)
    assert other.status_code == 422, other.text
    assert "Idempotency-Key" in other.json()["message"]
    # the same meaning in snake_case is the same body
    snake = job_body(site_env, "idem-a")
    snake["job"]["working_directory"] = snake["job"].pop("workingDirectory")
    snake["job"]["standard_output"] = snake["job"].pop("standardOutput")
    same = await asyncio.to_thread(post, events_server, snake, key)
    assert (same.status_code, same.json()) == (201, first.json())


async def test_concurrent_requests_with_one_key_make_one_job(
    events_server: ApiServer, site_env: SiteEnv, ssh_as
) -> None:
    name = f"idem-{uuid.uuid4().hex[:8]}"
    key = str(uuid.uuid4())
    body = job_body(site_env, name)
    async with httpx.AsyncClient(
        base_url=events_server.url, headers=events_server.headers(), timeout=30
    ) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"/compute/{events_server.system}/jobs",
                    json=body,
                    headers={"Idempotency-Key": key},
                )
                for _ in range(20)
            )
        )
    assert {a.status_code for a in answers} == {201}
    ids = {a.json()["jobId"] for a in answers}
    assert len(ids) == 1
    assert sum(a.headers.get("Idempotent-Replayed") != "true" for a in answers) == 1
    assert await jobs_named(ssh_as, "hpcuser1", name) == list(ids)


async def test_keys_are_per_user(events_server: ApiServer, site_env: SiteEnv) -> None:
    key = str(uuid.uuid4())
    mine = await asyncio.to_thread(post, events_server, job_body(site_env, "idem-u1"), key)
    body = job_body(site_env, "idem-u2", user="hpcuser2")
    theirs = await asyncio.to_thread(post, events_server, body, key, "hpcuser2")
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["jobId"] != theirs.json()["jobId"]
    assert "Idempotent-Replayed" not in theirs.headers


async def test_invalid_key_is_400(events_server: ApiServer, site_env: SiteEnv) -> None:
    answer = await asyncio.to_thread(post, events_server, job_body(site_env, "x"), "a b")
    assert answer.status_code == 400, answer.text


async def test_rejected_submission_forgets_the_key(
    events_server: ApiServer, site_env: SiteEnv
) -> None:
    """sbatch refused the job: nothing was created, so the key may be used again."""
    key = str(uuid.uuid4())
    body = job_body(site_env, "idem-bad")
    body["job"]["partition"] = "nosuchpartition"
    refused = await asyncio.to_thread(post, events_server, body, key)
    assert refused.status_code == 400, refused.text
    again = await asyncio.to_thread(post, events_server, body, key)
    assert again.status_code == 400, again.text
