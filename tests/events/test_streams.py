"""Job event streams (SSE) and long-polls through a real server, as both users."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.events.conftest import remote
from tests.events.helpers import TERMINAL, SseEvent, sse_events
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]


def client(server: ApiServer, user: str = "hpcuser1") -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=server.headers(user), timeout=60)


async def submit(
    c: httpx.AsyncClient,
    server: ApiServer,
    site_env: SiteEnv,
    script: str,
    user: str = "hpcuser1",
    **extra: Any,
) -> str:
    body = {
        "job": {
            "name": f"ev-{uuid.uuid4().hex[:6]}",
            "workingDirectory": site_env.scratch(user),
            "script": f"#!/bin/bash\n{script}\n",
            "standardOutput": "/dev/null",
            **extra,
        }
    }
    answer = await c.post(f"/compute/{server.system}/jobs", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["jobId"]


async def events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    async for event in sse_events(response.aiter_lines()):
        yield event


async def wait_terminal(c: httpx.AsyncClient, server: ApiServer, job_id: str) -> dict:
    answer = await c.get(
        f"/compute/{server.system}/jobs/{job_id}", params={"waitFor": "terminal", "timeout": 60}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Hpcgate-Wait"] == "terminal"
    return answer.json()["jobs"][0]


async def test_stream_shows_each_state_then_closes(
    events_server: ApiServer, site_env: SiteEnv
) -> None:
    async with client(events_server) as c:
        job_id = await submit(c, events_server, site_env, "sleep 3")
        url = f"/compute/{events_server.system}/jobs/{job_id}/events"
        async with c.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            received = [e async for e in events(response)]
    jobs = [e for e in received if e.event in ("job", "terminal")]
    named = [e.event for e in received if e.event != "comment"]
    assert named[:2] == ["job", "synced"]  # the state at connect, then live changes
    states = [e.state for e in jobs]
    assert states[-1] == "COMPLETED" and jobs[-1].event == "terminal"
    assert "RUNNING" in states
    assert all(e.event == "job" for e in jobs[:-1])
    assert len(set(states)) == len(states)  # one event per state
    ids = [int(e.id) for e in jobs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {e.json()["jobId"] for e in jobs} == {job_id}
    assert jobs[-1].json()["status"]["exitCode"] == 0
    assert any(e.event == "comment" and e.data == "keep-alive" for e in received)


async def test_resume_with_last_event_id_gets_terminal_event(
    events_server: ApiServer, site_env: SiteEnv
) -> None:
    async with client(events_server) as c:
        job_id = await submit(c, events_server, site_env, "sleep 2")
        url = f"/compute/{events_server.system}/jobs/{job_id}/events"
        async with c.stream("GET", url) as response:
            async for event in events(response):
                if event.event == "job":
                    first = event
                    break  # the client goes away before the job ends
        assert first.state not in TERMINAL
        await wait_terminal(c, events_server, job_id)  # it ended while we were away
        async with c.stream("GET", url, headers={"Last-Event-ID": first.id}) as response:
            resumed = [e async for e in events(response) if e.event != "comment"]
        assert resumed, "the terminal event was missed"
        assert resumed[-1].event == "terminal" and resumed[-1].state == "COMPLETED"
        assert all(int(e.id) > int(first.id) for e in resumed)
        # a client that has the terminal event gets nothing more, the stream closes
        started = time.monotonic()
        async with c.stream("GET", url, headers={"Last-Event-ID": resumed[-1].id}) as response:
            after = [e async for e in events(response) if e.event != "comment"]
        assert after == []
        assert time.monotonic() - started < 5
        # ?lastEventId= works as the header does
        async with c.stream("GET", url, params={"lastEventId": first.id}) as response:
            again = [e async for e in events(response) if e.event != "comment"]
        assert [e.id for e in again] == [e.id for e in resumed]


async def test_multi_job_stream(events_server: ApiServer, site_env: SiteEnv) -> None:
    async with client(events_server) as alice, client(events_server, "hpcuser2") as bob:
        mine = [await submit(alice, events_server, site_env, f"sleep {n}") for n in (1, 3)]
        theirs = await submit(bob, events_server, site_env, "sleep 1", "hpcuser2")
        jobs = ",".join([*mine, theirs, "99999999"])
        url = f"/compute/{events_server.system}/events"
        async with alice.stream("GET", url, params={"jobs": jobs}) as response:
            assert response.status_code == 200
            received = [e async for e in events(response) if e.event != "comment"]
    errors = {e.json()["jobId"]: e.json() for e in received if e.event == "error"}
    assert set(errors) == {theirs, "99999999"}
    assert {e["status"] for e in errors.values()} == {404}
    terminal = {e.json()["jobId"]: e.state for e in received if e.event == "terminal"}
    assert terminal == {mine[0]: "COMPLETED", mine[1]: "COMPLETED"}
    ids = [int(e.id) for e in received if e.id]
    assert ids == sorted(ids)
    assert all(e.json().get("jobId") != theirs for e in received if e.event != "error")


async def test_all_jobs_stream_shows_only_callers_jobs(
    events_server: ApiServer, site_env: SiteEnv
) -> None:
    async with client(events_server) as alice, client(events_server, "hpcuser2") as bob:
        url = f"/compute/{events_server.system}/events"
        seen: list[SseEvent] = []

        async def follow() -> None:
            async with bob.stream("GET", url) as response:
                assert response.status_code == 200
                async for event in events(response):
                    seen.append(event)
                    if event.event == "terminal" and event.json()["jobId"] == bobs:
                        return

        bobs = ""
        follower = asyncio.create_task(follow())
        await asyncio.sleep(1.5)  # the stream is open before the jobs exist
        alices = await submit(alice, events_server, site_env, "sleep 1")
        bobs = await submit(bob, events_server, site_env, "sleep 1", "hpcuser2")
        await asyncio.wait_for(follower, 30)
        await wait_terminal(alice, events_server, alices)
    assert any(e.event == "synced" for e in seen)
    shown = [e.json() for e in seen if e.event in ("job", "terminal")]
    assert {job["user"] for job in shown} == {"hpcuser2"}
    assert alices not in {job["jobId"] for job in shown}
    assert [job["status"]["state"] for job in shown if job["jobId"] == bobs][-1] == "COMPLETED"


async def test_other_users_job_cannot_be_streamed_or_awaited(
    events_server: ApiServer, site_env: SiteEnv
) -> None:
    async with client(events_server) as alice, client(events_server, "hpcuser2") as bob:
        job_id = await submit(alice, events_server, site_env, "sleep 5")
        base = f"/compute/{events_server.system}/jobs/{job_id}"
        # alice watches it, so the watcher holds it: bob still gets nothing
        await alice.get(base, params={"waitFor": "change", "timeout": 0})
        streamed = await bob.get(f"{base}/events")
        assert streamed.status_code == 404, streamed.text
        assert "hpcuser1" not in streamed.text
        for params in ({"waitFor": "terminal", "timeout": 2}, {"waitFor": "change"}):
            waited = await bob.get(base, params=params)
            assert waited.status_code == 404, waited.text
        await alice.delete(base)


async def test_long_poll_change_and_timeout(events_server: ApiServer, site_env: SiteEnv) -> None:
    async with client(events_server) as c:
        job_id = await submit(c, events_server, site_env, "sleep 4")
        url = f"/compute/{events_server.system}/jobs/{job_id}"
        # timeout: the current state, at once when timeout=0
        started = time.monotonic()
        now = await c.get(url, params={"waitFor": "terminal", "timeout": 0})
        assert now.status_code == 200 and now.headers["X-Hpcgate-Wait"] == "timeout"
        assert time.monotonic() - started < 3
        first_id = int(now.headers["X-Hpcgate-Event-Id"])
        state = now.json()["jobs"][0]["status"]["state"]
        # change relative to a known state
        changed = await c.get(url, params={"waitFor": "change", "state": state, "timeout": 30})
        assert changed.headers["X-Hpcgate-Wait"] == "changed"
        assert changed.json()["jobs"][0]["status"]["state"] != state
        # relative to an event id: immediately when a newer event exists
        started = time.monotonic()
        newer = await c.get(url, params={"waitFor": "change", "since": first_id, "timeout": 30})
        assert newer.headers["X-Hpcgate-Wait"] in ("changed", "terminal")
        assert int(newer.headers["X-Hpcgate-Event-Id"]) > first_id
        assert time.monotonic() - started < 1
        # a short wait on a running job times out with the current state
        short = await c.get(url, params={"waitFor": "terminal", "timeout": 1})
        assert short.headers["X-Hpcgate-Wait"] in ("timeout", "terminal")
        job = await wait_terminal(c, events_server, job_id)
        assert job["status"]["state"] == "COMPLETED"
        # an ended job cannot change any more: waitFor=change answers at once
        ended = await c.get(url, params={"waitFor": "change", "timeout": 30})
        assert ended.headers["X-Hpcgate-Wait"] == "terminal"
        # bad parameters
        assert (
            await c.get(url, params={"waitFor": "terminal", "timeout": 10_000})
        ).status_code == 400
        assert (await c.get(url, params={"waitFor": "soon"})).status_code == 400
        missing = f"/compute/{events_server.system}/jobs/99999999"
        assert (await c.get(missing, params={"waitFor": "terminal"})).status_code == 404


async def test_array_job_waits_for_all_tasks(events_server: ApiServer, site_env: SiteEnv) -> None:
    async with client(events_server) as c:
        job_id = await submit(
            c, events_server, site_env, "sleep $((SLURM_ARRAY_TASK_ID + 1))", array="0-2"
        )
        job = await wait_terminal(c, events_server, job_id)
        assert job["jobId"] == job_id
        assert job["status"]["state"] == "COMPLETED"
        assert sorted(t["id"] for t in job["tasks"]) == [f"{job_id}_{i}" for i in range(3)]
        assert {t["status"]["state"] for t in job["tasks"]} == {"COMPLETED"}
        task = await wait_terminal(c, events_server, f"{job_id}_1")
        assert task["jobId"] == f"{job_id}_1"


async def test_plain_get_is_served_by_the_watcher(
    events_server: ApiServer, site_env: SiteEnv
) -> None:
    """While a job is watched, repeated GETs run no scheduler command of their own."""
    from tests.events.helpers import commands, scrape

    async with client(events_server) as c:
        job_id = await submit(c, events_server, site_env, "sleep 5")
        url = f"/compute/{events_server.system}/jobs/{job_id}"
        await c.get(url, params={"waitFor": "change", "timeout": 0})
        before = await scrape(c, events_server.url)
        for _ in range(20):
            answer = await c.get(url)
            assert answer.status_code == 200
            assert answer.json()["jobs"][0]["jobId"] == job_id
            await asyncio.sleep(0.1)
        after = await scrape(c, events_server.url)
        assert commands(after, "squeue", source="request") == commands(
            before, "squeue", source="request"
        )
        await c.delete(url)


async def test_per_user_watcher_without_service_user(
    site_env: SiteEnv, ssh_as, tmp_path: Path
) -> None:
    """Without a service user the watcher polls per user, as each user."""
    server = start_server(
        site_env,
        tmp_path,
        overrides={
            "service_user": None,
            "accounts": {"source": "local", "min_uid": 1000, "max_uid": 60000},
        },
    )
    try:
        async with client(server) as c:
            job_id = await submit(c, server, site_env, "sleep 1")
            url = f"/compute/{server.system}/jobs/{job_id}/events"
            async with c.stream("GET", url) as response:
                received = [e async for e in events(response) if e.event != "comment"]
            assert received[-1].event == "terminal" and received[-1].state == "COMPLETED"
        async with client(server, "hpcuser2") as bob:
            assert (await bob.get(url)).status_code == 404
    finally:
        server.stop()
    assert job_id in await remote(
        ssh_as, "hpcuser1", "sacct", "-n", "-X", "-j", job_id, "-o", "JobID"
    )
