"""HpcJobSensor and HpcFileSensor: poke, deferral, resumption."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException, TaskDeferred

from airflow_provider_hpc.exceptions import HpcJobError
from airflow_provider_hpc.sensors.files import HpcFileSensor
from airflow_provider_hpc.sensors.job import HpcJobSensor
from airflow_provider_hpc.triggers.files import HpcFileTrigger
from airflow_provider_hpc.triggers.job import HpcJobTrigger
from tests.provider.conftest import make_context
from tests.provider.realapi import SYSTEM, RealApi


def job_sensor(job_id: Any, **kw: Any) -> HpcJobSensor:
    return HpcJobSensor(task_id="wait", job_id=job_id, poke_interval=1, timeout=60, **kw)


def test_job_sensor_pokes(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING", "COMPLETED"])
    sensor = job_sensor({"job_id": job.job_id})
    assert not sensor.poke(make_context()).is_done
    done = sensor.poke(make_context())
    assert done.is_done and done.xcom_value["state"] == "COMPLETED"


def test_job_sensor_fails_on_a_failed_job_and_waits_through_errors(api: RealApi) -> None:
    job = api.add_job(plan=["NODE_FAIL"], exit_code=1)
    api.inject("GET", "/jobs/", *[httpx.Response(502)] * 6)
    sensor = job_sensor(job.job_id)
    assert not sensor.poke(make_context()).is_done  # transient: not yet
    with pytest.raises(HpcJobError, match="NODE_FAIL"):
        sensor.poke(make_context())


def test_job_sensor_defers_without_owning_the_job(api: RealApi) -> None:
    job = api.add_job(plan=["PENDING"])
    with pytest.raises(TaskDeferred) as info:
        job_sensor(job.job_id, deferrable=True).execute(make_context())
    trigger = info.value.trigger
    assert isinstance(trigger, HpcJobTrigger) and info.value.method_name == "execute_complete"
    assert trigger.cancel_on_kill is False and trigger.poll_interval == 1.0


def test_job_sensor_resumes(api: RealApi) -> None:
    sensor = job_sensor("5", deferrable=True)
    ok = {
        "status": "success",
        "job_id": "5",
        "system": SYSTEM,
        "state": "COMPLETED",
        "exit_code": 0,
    }
    assert sensor.execute_complete(make_context(), ok)["state"] == "COMPLETED"
    with pytest.raises(HpcJobError, match="CANCELLED"):
        sensor.execute_complete(make_context(), {**ok, "status": "failed", "state": "CANCELLED"})
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute_complete(make_context(), {**ok, "status": "timeout"})
    with pytest.raises(AirflowSkipException):
        job_sensor("5", soft_fail=True).execute_complete(
            make_context(), {**ok, "status": "timeout"}
        )


def test_file_sensor_pokes_and_defers(api: RealApi) -> None:
    sensor = HpcFileSensor(task_id="f", path="/scratch/hpcuser/out.dat", deferrable=True, timeout=5)
    assert sensor.poke(make_context()) is False
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(make_context())
    assert isinstance(info.value.trigger, HpcFileTrigger)
    assert info.value.trigger.path == "/scratch/hpcuser/out.dat"
    api.files["/scratch/hpcuser/out.dat"] = b"1"
    assert sensor.poke(make_context()) is True
    assert sensor.execute(make_context()) is None  # found on the first poke: no deferral
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute_complete(make_context(), {"status": "timeout", "message": "late"})
