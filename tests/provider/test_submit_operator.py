"""HpcSubmitJobOperator: deferral, resumption, exactly-once re-attach, cancel, worker polling."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_hpc.exceptions import HpcApiError, HpcJobError
from airflow_provider_hpc.identity import TaskIdentity
from airflow_provider_hpc.links.job import HpcJobApiLink, HpcJobLink
from airflow_provider_hpc.operators.job import STATE_KEY, HpcSubmitJobOperator
from airflow_provider_hpc.triggers.job import HpcJobTrigger
from tests.provider.conftest import FakeStore, FakeTI, make_context
from tests.provider.realapi import SYSTEM, RealApi

SCRIPT = "#!/bin/bash\necho hello\n"


def operator(**kw: Any) -> HpcSubmitJobOperator:
    args: dict[str, Any] = {
        "task_id": "submit",
        "script": SCRIPT,
        "working_directory": "/scratch/hpcuser",
        "poll_interval": 0.001,
        "deferrable": True,
    }
    return HpcSubmitJobOperator(**{**args, **kw})


def defer(op: HpcSubmitJobOperator, context: dict[str, Any]) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as info:
        op.execute(context)
    return info.value


def success_event(job_id: str, state: str = "COMPLETED", code: int = 0) -> dict[str, Any]:
    status = "success" if state == "COMPLETED" else "failed"
    return {"status": status, "job_id": job_id, "system": SYSTEM, "state": state, "exit_code": code}


# ---------------------------------------------------------------------- deferral


def test_execute_defers_to_the_job_trigger(api: RealApi) -> None:
    context = make_context()
    deferred = defer(
        operator(time_limit=timedelta(hours=1), nodes=2, dependencies=[{"job_id": "5"}, 6]), context
    )
    trigger = deferred.trigger
    assert isinstance(trigger, HpcJobTrigger)
    assert deferred.method_name == "execute_complete"
    assert (trigger.job_id, trigger.system, trigger.cancel_on_kill) == ("1000", SYSTEM, True)
    assert trigger.deadline is not None and trigger.poll_interval == 0.001
    ti = context["ti"]
    page_url = ti.xcoms.pop("job_page_url")  # the browser page, signed for the job's owner
    assert page_url.startswith(f"{api.url}/job-pages/{SYSTEM}/1000?user=")
    assert ti.xcoms == {"job_id": "1000", "job_url": f"{api.url}/compute/{SYSTEM}/jobs/1000"}
    body = json.loads(api.submissions[0].content)["job"]
    identity = TaskIdentity("example", "submit", "manual__2026-01-01", generation=1)
    assert body["name"] == identity.job_name()
    assert body["timeLimit"] == "0-01:00:00" and body["nodes"] == 2
    assert body["dependencies"] == ["5", "6"]
    assert api.submissions[0].headers["Idempotency-Key"] == identity.idempotency_key()
    assert context["task_state_store"].data[STATE_KEY]["job_id"] == "1000"


def test_deferrable_default_comes_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert operator(deferrable=None).deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert operator(deferrable=None).deferrable is False


def test_execute_complete_success_returns_the_result_and_logs_output(
    api: RealApi, capsys: pytest.CaptureFixture[str]
) -> None:
    job = api.add_job(plan=["COMPLETED"])
    result = operator().execute_complete(make_context(), success_event(job.job_id))
    expected = {"job_id": job.job_id, "system": SYSTEM, "state": "COMPLETED", "exit_code": 0}
    assert result.items() >= expected.items()
    logged = capsys.readouterr().out  # the task log (structlog writes to stdout here)
    assert "result=42" in logged and "error: boom" in logged
    assert api.cancels == []


def test_execute_complete_failure_raises_with_state_and_stderr(api: RealApi) -> None:
    job = api.add_job(plan=["FAILED"], exit_code=3)
    with pytest.raises(HpcJobError, match=r"ended FAILED \(exit code 3\)") as info:
        operator().execute_complete(make_context(), success_event(job.job_id, "FAILED", 3))
    assert "error: boom" in str(info.value)
    assert (info.value.state, info.value.exit_code) == ("FAILED", 3)


def test_execute_complete_timeout_cancels_the_job(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING"])
    event = {**success_event(job.job_id), "status": "timeout", "state": "RUNNING"}
    with pytest.raises(HpcJobError, match="did not finish in time"):
        operator().execute_complete(make_context(), event)
    assert len(api.cancels) == 1


def test_execute_complete_error_leaves_the_job_for_the_retry(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING"])
    event = {**success_event(job.job_id), "status": "error", "message": "API down"}
    with pytest.raises(HpcJobError, match="lost track"):
        operator().execute_complete(make_context(), event)
    assert api.cancels == []


# ---------------------------------------------------------------------- exactly once


def test_retry_reattaches_via_the_task_state_store(api: RealApi) -> None:
    store = FakeStore()
    first = defer(operator(), make_context(store))
    second = defer(operator(), make_context(store, ti=FakeTI(try_number=2)))
    assert second.trigger.job_id == first.trigger.job_id
    assert len(api.submissions) == 1


def test_retry_reattaches_by_name_when_the_record_is_missing(api: RealApi) -> None:
    defer(operator(), make_context(FakeStore()))  # e.g. the worker died before recording
    fresh_store = FakeStore()
    again = defer(operator(), make_context(fresh_store))
    assert again.trigger.job_id == "1000" and len(api.submissions) == 1
    assert fresh_store.data[STATE_KEY]["job_id"] == "1000"


def test_retry_after_completion_submits_nothing_and_does_not_wait(api: RealApi) -> None:
    api.cluster.plan = ["COMPLETED"]
    store = FakeStore()
    defer(operator(), make_context(store))
    result = operator().execute(make_context(store))  # job already COMPLETED: no deferral
    assert result["state"] == "COMPLETED" and len(api.submissions) == 1


def test_retry_after_a_failed_job_submits_a_new_one(api: RealApi) -> None:
    api.cluster.plan = ["FAILED"]
    api.cluster.exit_code = 1
    store = FakeStore()
    defer(operator(), make_context(store))
    api.cluster.plan, api.cluster.exit_code = ["RUNNING"], 0
    again = defer(operator(), make_context(store))
    assert again.trigger.job_id == "1001"
    keys = [r.headers["Idempotency-Key"] for r in api.submissions]
    assert len(keys) == 2 and keys[0] != keys[1]


def test_clear_starts_a_new_job_and_cancels_the_old_one(api: RealApi) -> None:
    api.cluster.plan = ["RUNNING"]
    store = FakeStore()
    defer(operator(), make_context(store, ti=FakeTI(try_number=1, max_tries=2)))
    # cleared during try 1: max_tries = 1 + retries, the next try starts group 2
    again = defer(operator(), make_context(store, ti=FakeTI(try_number=2, max_tries=3)))
    assert again.trigger.job_id == "1001"
    assert [r.url.path.rsplit("/", 1)[1] for r in api.cancels] == ["1000"]
    assert api.jobs["1000"].name.endswith("-g1") and api.jobs["1001"].name.endswith("-g2")


def test_clearing_other_tasks_does_not_start_a_new_group(api: RealApi) -> None:
    api.cluster.plan = ["RUNNING"]
    store = FakeStore()
    defer(operator(), make_context(store, clear_number=0))
    again = defer(operator(), make_context(store, clear_number=3, ti=FakeTI(try_number=2)))
    assert again.trigger.job_id == "1000" and api.cancels == []


def test_try_group_falls_back_to_the_clear_number() -> None:
    from types import SimpleNamespace

    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1)
    context = {"ti": ti, "dag_run": SimpleNamespace(clear_number=4)}
    assert TaskIdentity.from_context(context).generation == 4


def test_mapped_instances_get_their_own_jobs(api: RealApi) -> None:
    store_a, store_b = FakeStore(), FakeStore()
    a = defer(operator(), make_context(store_a, ti=FakeTI(map_index=0)))
    b = defer(operator(), make_context(store_b, ti=FakeTI(map_index=1)))
    assert a.trigger.job_id != b.trigger.job_id


def test_lost_submission_answer_is_found_by_name(api: RealApi) -> None:
    def submitted_but_502(request: httpx.Request) -> httpx.Response:
        assert api.transport.forward(request).status_code == 201  # sbatch ran ...
        return httpx.Response(502)  # ... but the answer was lost

    api.inject("POST", "/jobs$", submitted_but_502)
    deferred = defer(operator(), make_context())
    assert deferred.trigger.job_id == "1000"
    assert len(api.submissions) == 1  # the lost one, none more
    assert len(api.jobs) == 1


def test_server_side_idempotency_dedupes_a_repeated_submission(api: RealApi) -> None:
    api.inject("GET", "/jobs$", httpx.Response(200, json={"jobs": []}))  # name not listed yet
    api.inject("GET", "/jobs$", httpx.Response(200, json={"jobs": []}))

    def submitted_but_504(request: httpx.Request) -> httpx.Response:
        assert api.transport.forward(request).status_code == 201
        return httpx.Response(504)

    api.inject("POST", "/jobs$", submitted_but_504)  # answer lost, and the listing lags
    deferred = defer(operator(), make_context())
    assert deferred.trigger.job_id == "1000" and len(api.jobs) == 1


def test_same_key_other_body_reattaches_to_the_job_by_name(api: RealApi) -> None:
    """hpcgate answers 422 when a try group's key comes back with another body (a template
    rendered differently): the operator finds the group's job by name instead."""
    api.cluster.plan = ["RUNNING"]
    first = defer(operator(env={"STAMP": "try-1"}), make_context(FakeStore()))
    api.inject("GET", "/jobs$", httpx.Response(200, json={"jobs": []}))  # listing lags
    again = defer(operator(env={"STAMP": "try-2"}), make_context(FakeStore()))  # record lost
    assert again.trigger.job_id == first.trigger.job_id == "1000"
    assert len(api.jobs) == 1 and len(api.submissions) == 2


def test_a_422_with_no_job_by_that_name_fails_the_try(api: RealApi) -> None:
    api.inject(
        "POST", "/jobs$", httpx.Response(422, json={"message": "Field required: job.script"})
    )
    with pytest.raises(HpcApiError, match="Field required"):
        operator().execute(make_context())
    assert len(api.submissions) == 1 and api.jobs == {}


# ---------------------------------------------------------------------- cancel


def test_on_kill_cancels_the_job(api: RealApi) -> None:
    api.cluster.plan = ["RUNNING"]
    op = operator()
    defer(op, make_context())
    op.on_kill()
    assert len(api.cancels) == 1 and api.jobs["1000"].state == "CANCELLED"


def test_on_kill_after_resume_uses_the_event_job(api: RealApi) -> None:
    job = api.add_job(plan=["RUNNING"])
    op = operator()  # a new instance, as after deferral
    op._job_id, op._system = job.job_id, SYSTEM
    op.on_kill()
    assert len(api.cancels) == 1
    quiet = operator(cancel_on_kill=False)
    quiet._job_id, quiet._system = job.job_id, SYSTEM
    quiet.on_kill()
    assert len(api.cancels) == 1


# ---------------------------------------------------------------------- worker polling


def test_non_deferrable_path_polls_and_streams_output(
    api: RealApi, capsys: pytest.CaptureFixture[str]
) -> None:
    result = operator(deferrable=False).execute(make_context())
    assert result["state"] == "COMPLETED"
    assert api.calls("GET", "ops/view"), "stdout was followed while running"
    logged = capsys.readouterr().out
    assert "[job 1000 stdout] result=42" in logged and "error: boom" in logged


def test_non_deferrable_failure_raises(api: RealApi) -> None:
    api.cluster.plan, api.cluster.exit_code = ["RUNNING", "TIMEOUT"], 0
    with pytest.raises(HpcJobError, match="ended TIMEOUT"):
        operator(deferrable=False).execute(make_context())


def test_non_deferrable_timeout_cancels(api: RealApi) -> None:
    api.cluster.plan = ["RUNNING"]
    with pytest.raises(HpcJobError, match="did not finish"):
        operator(deferrable=False, job_timeout=0.01).execute(make_context())
    assert len(api.cancels) == 1


def test_fire_and_forget(api: RealApi) -> None:
    result = operator(wait_for_completion=False).execute(make_context())
    assert result == {"job_id": "1000", "system": SYSTEM, "state": "SUBMITTED", "exit_code": None}


# ---------------------------------------------------------------------- arguments, templates, link


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        HpcSubmitJobOperator(task_id="t", working_directory="/w")
    with pytest.raises(ValueError, match="exactly one"):
        HpcSubmitJobOperator(task_id="t", working_directory="/w", script="x", script_path="/y")


def test_dependency_expression_and_script_path(api: RealApi) -> None:
    op = operator(script=None, script_path="/home/u/run.sh", dependencies="afterany:7")
    spec = op.build_job_spec("n")
    assert spec.dependencies == "afterany:7" and spec.script_path == "/home/u/run.sh"
    assert operator(dependencies="12_3").build_job_spec("n").dependencies == ["12_3"]


def test_script_path_is_rendered_inline_not_loaded_as_a_template_file() -> None:
    op = operator(script=None, script_path="{{ params.dir }}/run.sh")
    op.render_template_fields({"params": {"dir": "/home/u"}, "ds": "2026-01-01"})
    assert op.script_path == "/home/u/run.sh"


def test_job_link_reads_the_url_from_xcom(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time import xcom

    monkeypatch.setattr(xcom.XCom, "get_value", classmethod(lambda cls, ti_key, key: f"url:{key}"))
    link = HpcJobLink()
    assert link.xcom_key == "job_page_url" and link.name == "HPC Job"
    assert link.get_link(operator(), ti_key=object()) == "url:job_page_url"  # type: ignore[arg-type]
    api_link = HpcJobApiLink()
    assert api_link.xcom_key == "job_url" and api_link.name == "HPC Job (API)"
    assert api_link.get_link(operator(), ti_key=object()) == "url:job_url"  # type: ignore[arg-type]
