"""HpcJobTrigger / HpcFileTrigger: serialisation, run() under asyncio, on_kill, cleanup."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from airflow.sdk.module_loading import import_string

from airflow_provider_hpc.triggers.files import HpcFileTrigger
from airflow_provider_hpc.triggers.job import HpcJobTrigger
from tests.provider.realapi import SYSTEM, RealApi


async def collect(trigger: Any) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


def job_trigger(job_id: str, **kw: Any) -> HpcJobTrigger:
    return HpcJobTrigger(job_id=job_id, system=SYSTEM, poll_interval=0.001, **kw)


def test_serialize_round_trip() -> None:
    trigger = HpcJobTrigger(
        job_id=12,
        system=SYSTEM,
        hpc_conn_id="c",
        deadline=1e9,
        poll_interval=5,
        cancel_on_kill=False,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_hpc.triggers.job.HpcJobTrigger"
    assert kwargs["deadline"] == 1e9 and kwargs["job_id"] == "12"
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    file_classpath, file_kwargs = HpcFileTrigger(path="/x", system=SYSTEM).serialize()
    assert import_string(file_classpath)(**file_kwargs).serialize() == (file_classpath, file_kwargs)


async def test_run_yields_one_success_event(api: RealApi) -> None:
    job = api.add_job(plan=["PENDING", "PENDING", "RUNNING", "COMPLETED"])
    events = await collect(job_trigger(job.job_id))
    assert events == [
        {
            "status": "success",
            "job_id": job.job_id,
            "system": SYSTEM,
            "state": "COMPLETED",
            "exit_code": 0,
            "state_reason": None,
            "message": "",
        }
    ]
    assert api.cancels == []


async def test_run_reports_failure_with_state_and_exit_code(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING", "OUT_OF_MEMORY"], exit_code=137)
    [event] = await collect(job_trigger(job.job_id))
    assert (event["status"], event["state"], event["exit_code"]) == ("failed", "OUT_OF_MEMORY", 137)


async def test_run_times_out_at_the_absolute_deadline(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING"])
    [event] = await collect(job_trigger(job.job_id, deadline=time.time() + 0.05))
    assert event["status"] == "timeout" and event["state"] == "RUNNING"
    assert api.cancels == []  # the operator decides what a timeout means


async def test_run_tolerates_transient_errors(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING", "COMPLETED"])
    # 6 x 503 exhausts one request's retries; then a 424 (cluster unreachable) and a timeout.
    api.inject("GET", "/jobs/", *[httpx.Response(503)] * 6, httpx.Response(424))
    api.inject("GET", "/jobs/", httpx.ConnectError("down"))
    [event] = await collect(job_trigger(job.job_id))
    assert event["status"] == "success"


async def test_run_gives_up_on_persistent_or_permanent_errors(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING"])
    api.inject("GET", "/jobs/", httpx.Response(403, json={"message": "not yours"}))
    [event] = await collect(job_trigger(job.job_id))
    assert event["status"] == "error" and "not yours" in event["message"]
    api.inject("GET", "/jobs/", *[httpx.Response(424)] * 50)
    [event] = await collect(job_trigger(job.job_id, error_window=0.01))
    assert event["status"] == "error"


async def test_not_found_is_tolerated_only_during_the_grace(api: RealApi) -> None:
    job = api.add_job(plan=["COMPLETED"])
    api.inject("GET", "/jobs/", httpx.Response(404, json={"message": "Job not found"}))
    [event] = await collect(job_trigger(job.job_id, not_found_until=time.time() + 60))
    assert event["status"] == "success"
    [event] = await collect(job_trigger("99999"))
    assert event["status"] == "error" and "Job not found" in event["message"]


async def test_run_twice_is_harmless(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING", "COMPLETED"])
    first = await collect(job_trigger(job.job_id))
    second = await collect(job_trigger(job.job_id))
    assert first == second and first[0]["status"] == "success"
    assert api.submissions == [] and api.cancels == []


async def test_on_kill_cancels_the_job(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING"])
    await job_trigger(job.job_id).on_kill()
    assert len(api.cancels) == 1 and job.state == "CANCELLED"


async def test_on_kill_of_a_sensor_trigger_and_cleanup_never_cancel(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING"])
    await job_trigger(job.job_id, cancel_on_kill=False).on_kill()
    await job_trigger(job.job_id).cleanup()
    assert api.cancels == [] and job.state == "RUNNING"


async def test_on_kill_of_a_finished_job_is_quiet(api: RealApi) -> None:
    job = api.add_job(plan=["COMPLETED"])
    await job_trigger(job.job_id).on_kill()  # nothing to cancel: not an error
    await job_trigger("4040").on_kill()  # 404
    assert len(api.cancels) == 2


async def test_file_trigger_waits_for_the_path(api: RealApi) -> None:
    path = "/scratch/hpcuser/ready.flag"

    def create_on_third_stat(request: httpx.Request) -> None:
        api.files[path] = b"ok"  # then the server answers

    api.inject(
        "GET",
        "ops/stat",
        httpx.Response(404, json={"message": "No such file or directory"}),
        httpx.Response(404, json={"message": "No such file or directory"}),
        create_on_third_stat,
    )
    trigger = HpcFileTrigger(path=path, system=SYSTEM, poll_interval=0.001)
    [event] = await collect(trigger)
    assert event == {"status": "success", "path": path, "system": SYSTEM, "size": 2, "message": ""}


async def test_file_trigger_timeout(api: RealApi) -> None:
    trigger = HpcFileTrigger(
        path="/scratch/hpcuser/nope", system=SYSTEM, poll_interval=0.001, deadline=time.time()
    )
    [event] = await collect(trigger)
    assert event["status"] == "timeout"


@pytest.mark.parametrize("conn_id", ["hpc_default", "hpc_oauth"])
async def test_trigger_uses_async_connection_lookup(
    api: RealApi, conn_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_hpc.hooks.hpc import HpcHook

    def no_sync_lookup(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sync connection lookup inside a trigger")

    monkeypatch.setattr(HpcHook, "get_connection", classmethod(no_sync_lookup))
    job = api.add_job(plan=["COMPLETED"])
    # poll_interval: this server has job events disabled (a 400), so the trigger polls
    trigger = HpcJobTrigger(
        job_id=job.job_id, system=SYSTEM, hpc_conn_id=conn_id, poll_interval=0.001
    )
    [event] = await collect(trigger)
    assert event["status"] == "success"


async def test_unexpected_errors_become_one_error_event(
    api: RealApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(HpcJobTrigger, "_next_status", broken)
    [event] = await collect(job_trigger("1"))
    assert event["status"] == "error" and "RuntimeError: bug" in event["message"]
