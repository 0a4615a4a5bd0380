"""The provider's hook, operator and trigger against the real server and site: the wire
behaviour the unit tests' fake stands in for (idempotency, error bodies, array ids,
visibility right after submission, cancellation)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_hpc.exceptions import HpcApiError, HpcNotFoundError
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.hooks.models import JobSpec, JobSummary
from airflow_provider_hpc.operators.job import HpcSubmitJobOperator
from airflow_provider_hpc.triggers.events import aclose_hubs
from airflow_provider_hpc.triggers.job import HpcJobTrigger
from tests.provider.conftest import FakeStore, FakeTI, make_context
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

USER = "hpcuser1"


@pytest.fixture
def hook(api_server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[HpcHook]:
    conn = {
        "conn_type": "hpc",
        "host": api_server.url,
        "password": api_server.token(USER),
        "extra": {"system": api_server.system},
    }
    monkeypatch.setenv("AIRFLOW_CONN_HPC_DEFAULT", json.dumps(conn))
    hook = HpcHook()
    yield hook
    hook.close()


@pytest.fixture
def scratch(site_env: SiteEnv) -> str:
    return site_env.scratch(USER)


def spec(scratch: str, script: str = "#!/bin/bash\nsleep 1\n", **kw: object) -> JobSpec:
    return JobSpec(
        name=f"prov-{uuid.uuid4().hex[:8]}", working_directory=scratch, script=script, **kw
    )


def wait_terminal(hook: HpcHook, job_id: str) -> str:
    return hook.wait_for_job(job_id, poll_interval=0.3, timeout=60).state


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(hook, scratch) -> None:
    job = spec(scratch)
    key = f"af-test-{uuid.uuid4().hex}"
    first = hook.submit_job(job, idempotency_key=key)
    assert hook.submit_job(job, idempotency_key=key) == first
    other = job.model_copy(update={"script": "#!/bin/bash\ntrue\n"})
    with pytest.raises(HpcApiError) as info:
        hook.submit_job(other, idempotency_key=key)
    assert info.value.status_code == 422 and "Idempotency-Key" in info.value.message
    assert not info.value.transient
    assert [j.job_id for j in hook.list_jobs(name=job.name)] == [first]
    assert wait_terminal(hook, first) == "COMPLETED"


def test_error_bodies_become_typed_errors(hook, scratch) -> None:
    with pytest.raises(HpcNotFoundError) as missing:
        hook.get_job_status("99999999")
    assert missing.value.message == "Job not found: 99999999"
    start = time.monotonic()
    with pytest.raises(HpcApiError) as refused:
        hook.submit_job(spec(scratch, partition="no-such-partition"))
    assert refused.value.status_code == 400 and not refused.value.transient
    assert "invalid partition" in refused.value.message.lower()
    assert time.monotonic() - start < 10  # a 4xx is not retried
    with pytest.raises(HpcNotFoundError, match="No such file or directory"):
        hook.stat(f"{scratch}/no-such-file-{uuid.uuid4().hex}")


def test_a_just_submitted_job_is_never_404(hook, scratch) -> None:
    for _ in range(3):
        job_id = hook.submit_job(spec(scratch, script="#!/bin/bash\ntrue\n"))
        assert hook.get_job_status(job_id).job_id == job_id


def test_array_id_answers_with_one_summary_and_task_ids_with_the_task(hook, scratch) -> None:
    script = '#!/bin/bash\nsleep 1\n[ "$SLURM_ARRAY_TASK_ID" != 2 ] || exit 5\n'
    job_id = hook.submit_job(spec(scratch, script=script, array="0-3"))
    running = hook.get_job(job_id)
    assert [j.job_id for j in running] == [job_id]  # one summary entry, not one per task
    assert wait_terminal(hook, job_id) == "FAILED"  # the first task that did not complete
    tasks = {i: hook.get_job_status(f"{job_id}_{i}") for i in range(4)}
    assert {i: (t.state, t.exit_code) for i, t in tasks.items()} == {
        0: ("COMPLETED", 0),
        1: ("COMPLETED", 0),
        2: ("FAILED", 5),
        3: ("COMPLETED", 0),
    }
    listed = hook.list_jobs(name=running[0].name)
    assert sorted(j.job_id for j in listed) == [f"{job_id}_{i}" for i in range(4)]


def test_operator_retry_finds_the_job_by_name_when_the_record_is_lost(
    hook, scratch, monkeypatch
) -> None:
    """A worker that died between submission and recording: the next try finds the job
    by its deterministic name instead of submitting another."""

    def op() -> HpcSubmitJobOperator:
        return HpcSubmitJobOperator(
            task_id=f"exactly-once-{uuid.uuid4().hex[:6]}",
            script="#!/bin/bash\nsleep 2\n",
            working_directory=scratch,
            wait_for_completion=False,
        )

    ti = FakeTI(task_id=f"t-{uuid.uuid4().hex[:8]}")
    first = op().execute(make_context(FakeStore(), ti=ti))
    again = op().execute(make_context(FakeStore(), ti=ti))
    assert again["job_id"] == first["job_id"]
    name = hook.get_job(first["job_id"])[0].name
    assert [j.job_id for j in hook.list_jobs(name=name)] == [first["job_id"]]


async def test_one_array_gets_one_summary_from_server_and_provider(hook, scratch) -> None:
    """The server summarises an array (the first non-COMPLETED task's state, the highest
    exit code); every provider path shows that summary: the hook, the trigger (event
    stream or GET), the operator's lookup by name, and the rule for task-only listings."""
    script = '#!/bin/bash\nsleep 1\ncase "$SLURM_ARRAY_TASK_ID" in 0) exit 1;; 1) exit 7;; esac\n'
    job = spec(scratch, script=script, array="0-2")
    job_id = await asyncio.to_thread(hook.submit_job, job)
    system = hook.resolve_system()
    trigger = HpcJobTrigger(job_id=job_id, system=system, poll_interval=0.5)
    [event] = [e.payload async for e in trigger.run()]
    await aclose_hubs()
    [record] = await asyncio.to_thread(hook.get_job, job_id)  # the server's own summary
    server = (record.state, record.status.exit_code)
    assert server == ("FAILED", 7)  # task 0 failed first; task 1's exit code is the highest
    summary = await asyncio.to_thread(hook.get_job_status, job_id)
    assert (summary.state, summary.exit_code) == server
    assert summary.tasks == 3
    assert summary.task_states == {
        f"{job_id}_0": "FAILED",
        f"{job_id}_1": "FAILED",
        f"{job_id}_2": "COMPLETED",
    }
    assert (event["status"], event["state"], event["exit_code"]) == ("failed", *server)
    op = HpcSubmitJobOperator(task_id="lookup", script="x", working_directory=scratch)
    named = await asyncio.to_thread(op._find_named, system, job.name)
    assert named is not None and (named.job_id, named.state, named.exit_code) == (job_id, *server)
    tasks = await asyncio.to_thread(hook.list_jobs, name=job.name)
    from_tasks = JobSummary.from_jobs(job_id, tasks)
    assert (from_tasks.state, from_tasks.exit_code) == server


async def test_trigger_waits_for_an_array_and_its_on_kill_cancels(hook, scratch) -> None:
    array = hook.submit_job(spec(scratch, script="#!/bin/bash\nsleep 1\n", array="0-2"))
    trigger = HpcJobTrigger(job_id=array, system=hook.resolve_system(), poll_interval=0.5)
    events = [event.payload async for event in trigger.run()]
    assert [(e["status"], e["state"]) for e in events] == [("success", "COMPLETED")]

    long = hook.submit_job(spec(scratch, script="#!/bin/bash\nsleep 300\n"))
    killer = HpcJobTrigger(job_id=long, system=hook.resolve_system())
    await killer.on_kill()
    for _ in range(60):
        if (await asyncio.to_thread(hook.get_job_status, long)).state == "CANCELLED":
            break
        await asyncio.sleep(0.5)
    assert hook.get_job_status(long).state == "CANCELLED"
    await killer.cleanup()  # never cancels anything (nothing left to check but no error)


def _requests_by_route(server: ApiServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("hpcgate_http_requests_total{") and 'method="GET"' in line:
            route = line.split('route="', 1)[1].split('"', 1)[0]
            counts[route] = counts.get(route, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def _route(counts: dict[str, float], suffix: str) -> float:
    return sum(value for route, value in counts.items() if route.endswith(suffix))


async def test_two_hundred_triggers_share_one_event_stream(hook, scratch, api_server) -> None:
    """200 deferred tasks on 10 jobs: one SSE request in total, no per-trigger GETs."""
    system = hook.resolve_system()
    before = await asyncio.to_thread(_requests_by_route, api_server)
    script = "#!/bin/bash\nsleep 2\n"
    submit = hook.submit_job
    ids = [await asyncio.to_thread(submit, spec(scratch, script=script)) for _ in range(10)]
    triggers = [
        HpcJobTrigger(job_id=ids[i % 10], system=system, poll_interval=30) for i in range(200)
    ]

    async def collect(trigger: HpcJobTrigger) -> list[dict]:
        return [event.payload async for event in trigger.run()]

    results = await asyncio.wait_for(asyncio.gather(*(collect(t) for t in triggers)), 180)
    assert [[e["status"] for e in events] for events in results] == [["success"]] * 200
    await aclose_hubs()  # a stream's request is counted when it ends
    for _ in range(50):
        after = await asyncio.to_thread(_requests_by_route, api_server)
        if _route(after, "/events") > _route(before, "/events"):
            break
        await asyncio.sleep(0.2)
    streams = _route(after, "/events") - _route(before, "/events")
    job_gets = _route(after, "/jobs/{job_id}") - _route(before, "/jobs/{job_id}")
    print(f"events requests: {streams:.0f}, per-job GETs: {job_gets:.0f}")
    assert streams == 1
    assert job_gets <= len(ids)  # at most one per job (a job the watcher missed), not per trigger
