"""The shared job-event stream: SSE parsing, one stream for many triggers, resume
with Last-Event-ID, liveness, and the fall-back to polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from airflow_provider_hpc.triggers import events as events_module
from airflow_provider_hpc.triggers.events import SSEParser, SSEvent, aclose_hubs, active_hubs
from airflow_provider_hpc.triggers.job import HpcJobTrigger
from tests.provider.fakeapi import SYSTEM, FakeHpcApi


@pytest.fixture(autouse=True)
async def close_hubs() -> AsyncIterator[None]:
    yield
    await aclose_hubs()


def trigger(job_id: str, poll_interval: float = 60.0, **kw: Any) -> HpcJobTrigger:
    return HpcJobTrigger(job_id=job_id, system=SYSTEM, poll_interval=poll_interval, **kw)


async def run(trig: HpcJobTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trig.run()]


async def until(condition: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.005)


def job_gets(api: FakeHpcApi) -> list[httpx.Request]:
    return api.calls("GET", r"/jobs/[^/]+$")


# --------------------------------------------------------------------------- parser


def test_sse_parser_follows_the_spec() -> None:
    text = (
        "retry: 2500\n\n"
        ": a comment\n"
        'id: 7\nevent: job\ndata: {"a":\ndata:1}\n\n'  # two data lines, one without space
        "data: plain\r\n\r\n"  # default type, id carried over, CRLF
        "event: synced\n\n"  # no data: not dispatched
        "id: 9\ndata\nignored-field: x\n\n"  # "data" without colon: empty line of data
    )
    parser = SSEParser()
    got = [e for line in text.split("\n") if (e := parser.feed(line.rstrip("\r")))]
    assert got == [
        SSEvent("job", '{"a":\n1}', "7"),
        SSEvent("message", "plain", "7"),
        SSEvent("message", "", "9"),
    ]
    assert parser.retry == 2500 and parser.last_id == "9"
    parser.feed("retry: soon")
    assert parser.retry == 2500


# --------------------------------------------------------------------------- the hub


async def test_a_thousand_triggers_on_fifty_jobs_share_one_stream(fake_api: FakeHpcApi) -> None:
    fake_api.enable_events()
    jobs = [fake_api.add_job(plan=["RUNNING"]) for _ in range(50)]
    triggers = [trigger(jobs[i % 50].job_id) for i in range(1000)]
    tasks = [asyncio.ensure_future(run(t)) for t in triggers]
    await until(lambda: bool(active_hubs()) and active_hubs()[0].refs == 1000)
    hub = active_hubs()[0]
    await until(lambda: hub.synced)
    await asyncio.sleep(0.05)  # every trigger has its first state and waits for a change
    for index, job in enumerate(jobs):
        if index % 10 == 0:
            fake_api.set_state(job, "FAILED", exit_code=3)
        else:
            fake_api.set_state(job, "COMPLETED", exit_code=0)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    for index, events in enumerate(results):
        job_index = index % 50
        expected = ("failed", "FAILED", 3) if job_index % 10 == 0 else ("success", "COMPLETED", 0)
        assert len(events) == 1
        event = events[0]
        assert (event["status"], event["state"], event["exit_code"]) == expected
        assert event["job_id"] == jobs[job_index].job_id
    assert len(fake_api.calls("GET", r"/events$")) == 1
    assert job_gets(fake_api) == []  # no per-job GETs at all
    assert hub.refs == 0 and hub.connections == 1


async def test_reconnect_resumes_with_last_event_id(fake_api: FakeHpcApi) -> None:
    fake_api.enable_events()
    job = fake_api.add_job(plan=["RUNNING"])
    # the first stream ends right after "synced"; the job ends while it is down
    fake_api.stream_ends = [lambda: fake_api.set_state(job, "COMPLETED")]
    [event] = await asyncio.wait_for(run(trigger(job.job_id)), 10)
    assert (event["status"], event["state"]) == ("success", "COMPLETED")
    first, second = fake_api.calls("GET", r"/events$")
    assert "last-event-id" not in first.headers
    assert second.headers["last-event-id"] == str(fake_api.event_seq - 1)
    assert job_gets(fake_api) == []  # the terminal event came from the replay


async def test_a_silent_stream_is_dead_and_replaced(
    fake_api: FakeHpcApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "DEAD_AFTER", 0.2)
    fake_api.enable_events()
    job = fake_api.add_job(plan=["RUNNING"])
    fake_api.stream_ends = [lambda: (fake_api.set_state(job, "TIMEOUT"), "hang")[1]]
    start = time.monotonic()
    [event] = await asyncio.wait_for(run(trigger(job.job_id)), 10)
    assert (event["status"], event["state"]) == ("failed", "TIMEOUT")
    assert 0.2 <= time.monotonic() - start < 5
    assert len(fake_api.calls("GET", r"/events$")) == 2 and job_gets(fake_api) == []


async def test_a_job_the_stream_never_mentions_is_fetched_once(fake_api: FakeHpcApi) -> None:
    fake_api.enable_events()
    fake_api.hidden.add("1000")
    old = fake_api.add_job(plan=["COMPLETED"])  # "ended long ago": not in the stream
    assert old.job_id == "1000"
    results = await asyncio.gather(*(run(trigger(old.job_id)) for _ in range(20)))
    assert all(events[0]["status"] == "success" for events in results)
    assert len(job_gets(fake_api)) == 1


async def test_no_events_endpoint_means_polling(fake_api: FakeHpcApi) -> None:
    job = fake_api.add_job(plan=["PENDING", "RUNNING", "COMPLETED"])
    [event] = await run(trigger(job.job_id, poll_interval=0.001))
    assert event["status"] == "success"
    assert len(fake_api.calls("GET", r"/events$")) == 1  # probed once: 404
    assert len(job_gets(fake_api)) == 3
    other = fake_api.add_job(plan=["COMPLETED"])
    [event] = await run(trigger(other.job_id, poll_interval=0.001))
    assert event["status"] == "success"
    assert len(fake_api.calls("GET", r"/events$")) == 1  # the 404 is remembered


async def test_a_failing_stream_degrades_to_polling(
    fake_api: FakeHpcApi, sleeps: list[float]
) -> None:
    """The stream's connect is retried like any request (same retry layer); when that
    fails too, waiters poll while the hub reconnects later."""
    fake_api.enable_events()
    fake_api.inject("GET", r"/events$", *[httpx.Response(503)] * 60)
    job = fake_api.add_job(plan=["RUNNING", "RUNNING", "COMPLETED"])
    [event] = await asyncio.wait_for(run(trigger(job.job_id, poll_interval=0.01)), 10)
    assert event["status"] == "success"
    assert len(job_gets(fake_api)) == 3
    assert len(fake_api.calls("GET", r"/events$")) == 6  # one connect: 1 + 5 retries
    assert len(sleeps) == 5


async def test_the_stream_uses_the_hooks_auth_flow(fake_api: FakeHpcApi) -> None:
    """OAuth2: the stream's connect carries the cached token; after a 401 it gets a new
    token and reconnects at once (the auth flow), without a pause of the hub."""
    fake_api.enable_events()
    job = fake_api.add_job(plan=["RUNNING"])
    fake_api.inject("GET", r"/events$", httpx.Response(401))
    fake_api.stream_ends = [None, lambda: fake_api.set_state(job, "COMPLETED")]
    trig = HpcJobTrigger(job_id=job.job_id, system=SYSTEM, hpc_conn_id="hpc_oauth")
    task = asyncio.ensure_future(run(trig))
    await until(lambda: bool(active_hubs()) and active_hubs()[0].synced)
    fake_api.set_state(job, "COMPLETED")
    [event] = await asyncio.wait_for(task, 10)
    assert event["status"] == "success"
    # the auth flow re-sends the same request with the new token
    first, second = fake_api.calls("GET", r"/events$")[:2]
    assert first is second and second.headers["authorization"] == "Bearer oauth-token-2"
    assert fake_api.tokens_issued == 2 and job_gets(fake_api) == []


async def test_deadline_still_fires_while_following_events(fake_api: FakeHpcApi) -> None:
    fake_api.enable_events()
    job = fake_api.add_job(plan=["RUNNING"])
    [event] = await asyncio.wait_for(run(trigger(job.job_id, deadline=time.time() + 0.2)), 5)
    assert (event["status"], event["state"]) == ("timeout", "RUNNING")
    assert job_gets(fake_api) == []


async def test_the_stream_closes_after_the_last_waiter(
    fake_api: FakeHpcApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "LINGER", 0.05)
    fake_api.enable_events()
    job = fake_api.add_job(plan=["COMPLETED"])
    await run(trigger(job.job_id))
    [hub] = active_hubs()
    await until(lambda: hub.closed)
    assert active_hubs() == []
