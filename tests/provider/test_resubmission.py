"""Failure-aware resubmission: the policy's rules (pure), and the submit operator acting
on them through the real server application over a fake cluster (``api``): which state
resubmits, with what, how often; the jobs list in the result; the ledger carried through
deferral (``kwargs``) and the task state store (a worker crash mid-resubmission).

The same behaviour on the real site, with a node set DOWN under a running job and a
real Airflow task run, is ``test_resubmission_site.py``.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_hpc.exceptions import HpcJobError
from airflow_provider_hpc.identity import TaskIdentity
from airflow_provider_hpc.operators.job import HpcSubmitJobOperator
from airflow_provider_hpc.operators.resubmission import (
    LEDGER_KEY,
    Action,
    JobLedger,
    ResubmitPolicy,
    format_memory,
    memory_mib,
    time_limit_seconds,
)
from airflow_provider_hpc.triggers.job import HpcJobTrigger, requeue_gave_up
from tests.provider.cluster import FakeJob
from tests.provider.conftest import FakeStore, FakeTI, make_context
from tests.provider.realapi import SYSTEM, RealApi

# ---------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("state", "reason", "action"),
    [
        ("COMPLETED", None, Action.COMPLETE),
        ("NODE_FAIL", "NodeDown", Action.RESUBMIT),
        ("BOOT_FAIL", None, Action.RESUBMIT),
        ("PREEMPTED", None, Action.RESUBMIT),
        ("REQUEUE_HOLD", None, Action.RESUBMIT),
        ("PENDING", "JobHoldMaxRequeue", Action.RESUBMIT),
        ("PENDING", "launch failed requeued held", Action.RESUBMIT),
        ("FAILED", "NonZeroExitCode", Action.FAIL),
        ("CANCELLED", None, Action.FAIL),
        ("DEADLINE", None, Action.FAIL),
        ("OUT_OF_MEMORY", None, Action.FAIL),  # opt-in only
        ("TIMEOUT", None, Action.FAIL),  # opt-in only
    ],
)
def test_which_state_resubmits(state: str, reason: str | None, action: Action) -> None:
    decision = ResubmitPolicy().decide(state, reason, resubmits=0, memory="1G", time_limit=5)
    assert decision.action is action, decision
    if action is Action.RESUBMIT:
        assert decision.resources is None and "machine failure" in decision.reason


def test_requeue_gave_up_only_for_held_requeues() -> None:
    assert requeue_gave_up("REQUEUE_HOLD", None)
    assert requeue_gave_up("PENDING", "launch failed requeued held")
    assert not requeue_gave_up("PENDING", "BeginTime")  # Slurm requeued it and will run it
    assert not requeue_gave_up("PENDING", "JobHeldUser")
    assert not requeue_gave_up("RUNNING", None)


def test_the_bound_counts_every_resubmission() -> None:
    policy = ResubmitPolicy(max_resubmits=2)
    assert policy.decide("NODE_FAIL", None, resubmits=1).action is Action.RESUBMIT
    last = policy.decide("NODE_FAIL", None, resubmits=2)
    assert last.action is Action.FAIL and "max_resubmits=2" in last.reason
    assert ResubmitPolicy(max_resubmits=0).decide("BOOT_FAIL", None, resubmits=0).action is (
        Action.FAIL
    )


@pytest.mark.parametrize(
    ("text", "mib"),
    [("4G", 4096), ("500", 500), ("500M", 500), ("1.5G", 1536), ("2048K", 2), ("1T", 1 << 20)],
)
def test_memory_text(text: str, mib: int) -> None:
    assert memory_mib(text) == mib


def test_memory_text_edge_cases() -> None:
    assert memory_mib("4000Mn") == 4000 and memory_mib("2Gc") == 2048  # sacct ReqMem
    assert memory_mib(None) is None and memory_mib("lots") is None
    assert (format_memory(8192), format_memory(1536)) == ("8G", "1536M")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (10, 600),
        (timedelta(hours=1), 3600),
        ("30", 1800),
        ("5:30", 330),
        ("1:00:00", 3600),
        ("1-00", 86400),
        ("2-03:04", (2 * 24 + 3) * 3600 + 240),
        ("0-01:00:05", 3605),
        ("UNLIMITED", None),
        (None, None),
    ],
)
def test_time_limit_text(value: Any, seconds: int | None) -> None:
    assert time_limit_seconds(value) == seconds


def test_out_of_memory_scales_up_to_the_cap() -> None:
    policy = ResubmitPolicy(max_resubmits=5, oom_memory_factor=2, oom_max_memory="3G")
    first = policy.decide("OUT_OF_MEMORY", None, resubmits=0, memory="1G")
    assert (first.action, first.resources) == (Action.RESUBMIT, {"memory": "2G"})
    second = policy.decide("OUT_OF_MEMORY", None, resubmits=1, memory="2G")
    assert second.resources == {"memory": "3G"}  # capped
    third = policy.decide("OUT_OF_MEMORY", None, resubmits=2, memory="3G")
    assert third.action is Action.FAIL and "cap" in third.reason
    unknown = policy.decide("OUT_OF_MEMORY", None, resubmits=0, memory=None)
    assert unknown.action is Action.FAIL and "memory=" in unknown.reason


def test_timeout_scales_up_to_the_cap_in_whole_minutes() -> None:
    policy = ResubmitPolicy(timeout_factor=1.5, timeout_max_time_limit="0-00:20:00")
    first = policy.decide("TIMEOUT", None, resubmits=0, time_limit=7)
    assert first.resources == {"time_limit": "0-00:11:00"}  # 10.5 min -> 11
    capped = policy.decide("TIMEOUT", None, resubmits=1, time_limit="0-00:15:00")
    assert capped.resources == {"time_limit": "0-00:20:00"}
    at_cap = policy.decide("TIMEOUT", None, resubmits=1, time_limit=20)
    assert at_cap.action is Action.FAIL and "cap" in at_cap.reason


def test_policy_arguments_are_checked_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="oom_memory_factor"):
        operator(oom_memory_factor=1.0)
    with pytest.raises(ValueError, match="oom_max_memory"):
        operator(oom_memory_factor=2, oom_max_memory="plenty")
    with pytest.raises(ValueError, match="max_resubmits"):
        operator(max_resubmits=-1)


def test_the_ledger_belongs_to_one_try_group() -> None:
    ledger = JobLedger(1, [])
    ledger.attach("5", {"memory": "2G"})["action"] = "resubmit"
    ledger.jobs[-1]["next_resources"] = {"memory": "4G"}
    carried = json.loads(json.dumps(ledger.to_dict()))
    again = JobLedger.from_dict(carried, 1)
    assert again.resubmits == 1 and again.next_resources == {"memory": "4G"}
    assert JobLedger.from_dict(carried, 2).jobs == []  # a cleared task starts afresh


# ---------------------------------------------------------------------- the operator


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


def plans(api: RealApi, *per_job: list[str]) -> None:
    """The n-th job the operator submits follows ``per_job[n]`` (the last one repeats)."""
    submitted: list[FakeJob] = []

    def on_submit(job: FakeJob) -> None:
        job.plan = list(per_job[min(len(submitted), len(per_job) - 1)])
        if job.plan[-1] != "COMPLETED":
            job.exit_code = 1
        submitted.append(job)

    api.cluster.on_submit = on_submit


def deferred(call: Any, *args: Any, **kwargs: Any) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as info:
        call(*args, **kwargs)
    return info.value


def fire(op: HpcSubmitJobOperator, context: dict[str, Any], task: TaskDeferred) -> Any:
    """Resume a deferred task as Airflow does: a new operator instance, the trigger's
    event (the job's state now) and the deferral's ``kwargs``."""
    trigger = task.trigger
    assert isinstance(trigger, HpcJobTrigger) and task.method_name == "execute_complete"
    kwargs = json.loads(json.dumps(task.kwargs))  # next_kwargs are stored as JSON
    return op.execute_complete(context, event_for(op, trigger.job_id), **kwargs)


def event_for(op: HpcSubmitJobOperator, job_id: str) -> dict[str, Any]:
    status = op.hook.get_job_status(job_id, system=SYSTEM)
    while not status.terminal and not requeue_gave_up(status.state, status.state_reason):
        status = op.hook.get_job_status(job_id, system=SYSTEM)
    return {
        "status": "success" if status.succeeded else "failed",
        "job_id": job_id,
        "system": SYSTEM,
        "state": status.state,
        "exit_code": status.exit_code,
        "state_reason": status.state_reason,
    }


def keys(api: RealApi) -> list[str]:
    return [request.headers["Idempotency-Key"] for request in api.submissions]


def test_node_fail_is_resubmitted_across_deferral(api: RealApi) -> None:
    plans(api, ["RUNNING", "NODE_FAIL"], ["RUNNING", "COMPLETED"])
    store = FakeStore()
    context = make_context(store)
    first = deferred(operator().execute, context)
    assert first.trigger.end_on_requeue_hold is True
    second = deferred(fire, operator(), context, first)
    assert (first.trigger.job_id, second.trigger.job_id) == ("1000", "1001")
    # the ledger travels in the deferral's kwargs (and the task state store)
    carried = second.kwargs["ledger"]["jobs"]
    assert [(j["job_id"], j["state"], j["action"]) for j in carried] == [
        ("1000", "NODE_FAIL", "resubmit"),
        ("1001", None, None),
    ]
    result = fire(operator(), context, second)
    assert (result["job_id"], result["state"]) == ("1001", "COMPLETED")
    assert [(j["job_id"], j["state"], j["action"]) for j in result["jobs"]] == [
        ("1000", "NODE_FAIL", "resubmit"),
        ("1001", "COMPLETED", "complete"),
    ]
    # each submission through the exactly-once machinery, with its own deterministic key
    identity = TaskIdentity("example", "submit", "manual__2026-01-01", generation=1)
    assert keys(api) == [identity.idempotency_key(), identity.idempotency_key("1000")]
    names = [json.loads(r.content)["job"]["name"] for r in api.submissions]
    assert names == [identity.job_name()] * 2
    assert context["ti"].xcoms["job_id"] == "1001"
    assert store.data[LEDGER_KEY]["jobs"][-1]["action"] == "complete"


def test_worker_crash_mid_resubmission_reattaches(api: RealApi) -> None:
    """The worker dies after the replacement was submitted, before anything else: the
    next try (same try group) finds it by name and its ledger in the state store."""
    plans(api, ["NODE_FAIL"], ["RUNNING", "RUNNING", "COMPLETED"])
    store = FakeStore()
    first = deferred(operator().execute, make_context(store))
    deferred(fire, operator(), make_context(store), first)  # resubmitted: job 1001
    store.data.pop("hpc_job")  # as if the crash came before the record was written
    retry = make_context(store, ti=FakeTI(try_number=2))
    again = deferred(operator().execute, retry)
    assert again.trigger.job_id == "1001" and len(api.submissions) == 2
    result = fire(operator(), retry, again)
    assert [j["job_id"] for j in result["jobs"]] == ["1000", "1001"]


def test_non_deferrable_resubmits_in_the_worker(api: RealApi) -> None:
    plans(api, ["BOOT_FAIL"], ["PREEMPTED"], ["RUNNING", "COMPLETED"])
    result = operator(deferrable=False).execute(make_context())
    assert [(j["job_id"], j["state"]) for j in result["jobs"]] == [
        ("1000", "BOOT_FAIL"),
        ("1001", "PREEMPTED"),
        ("1002", "COMPLETED"),
    ]
    assert len(api.submissions) == 3


def test_the_bound_then_fails_without_airflow_retries(api: RealApi) -> None:
    plans(api, ["NODE_FAIL"])
    with pytest.raises(HpcJobError, match=r"ended NODE_FAIL.*max_resubmits=1") as info:
        operator(deferrable=False, max_resubmits=1).execute(make_context())
    assert info.value.state == "NODE_FAIL" and len(api.submissions) == 2


def test_ordinary_failure_fails_fast_with_the_stderr_tail(api: RealApi) -> None:
    plans(api, ["RUNNING", "FAILED"])
    with pytest.raises(HpcJobError, match=r"ended FAILED") as info:
        operator(deferrable=False).execute(make_context())
    assert "error: boom" in str(info.value) and len(api.submissions) == 1


def test_out_of_memory_resubmits_with_more_memory_when_asked(api: RealApi) -> None:
    plans(api, ["OUT_OF_MEMORY"], ["OUT_OF_MEMORY"], ["COMPLETED"])
    op = operator(deferrable=False, memory="1G", oom_memory_factor=2, oom_max_memory="3G")
    result = op.execute(make_context())
    memories = [json.loads(r.content)["job"].get("memory") for r in api.submissions]
    assert memories == ["1G", "2G", "3G"]
    assert [j["resources"] for j in result["jobs"]] == [{}, {"memory": "2G"}, {"memory": "3G"}]
    # without the policy: fails at once
    plans(api, ["OUT_OF_MEMORY"])
    with pytest.raises(HpcJobError, match="OUT_OF_MEMORY"):
        operator(deferrable=False, memory="1G", task_id="other").execute(
            make_context(ti=FakeTI("other"))
        )


def test_timeout_resubmits_with_a_longer_limit_up_to_the_cap(api: RealApi) -> None:
    plans(api, ["TIMEOUT"])
    op = operator(deferrable=False, time_limit=10, timeout_factor=2, timeout_max_time_limit=20)
    with pytest.raises(HpcJobError, match="already the cap"):
        op.execute(make_context())
    limits = [json.loads(r.content)["job"]["timeLimit"] for r in api.submissions]
    assert limits == ["10", "0-00:20:00"]


def test_a_job_requeued_by_slurm_itself_is_waited_for_not_resubmitted(api: RealApi) -> None:
    """NODE_FAIL seen, but Slurm requeued the job (PENDING again, same id): wait on."""
    plans(api, ["RUNNING", "NODE_FAIL", "PENDING", "RUNNING", "COMPLETED"])
    context = make_context()
    first = deferred(operator().execute, context)
    event = {**event_for(operator(), "1000"), "state": "NODE_FAIL"}
    again = deferred(operator().execute_complete, context, event, **first.kwargs)
    assert again.trigger.job_id == "1000" and len(api.submissions) == 1
    assert again.kwargs["ledger"]["jobs"][0]["requeued"] == 1
    result = fire(operator(), context, again)
    assert result["state"] == "COMPLETED" and len(result["jobs"]) == 1


def test_a_requeue_slurm_gave_up_on_is_cancelled_and_resubmitted(api: RealApi) -> None:
    plans(api, ["RUNNING", "REQUEUE_HOLD"], ["COMPLETED"])
    context = make_context()
    first = deferred(operator().execute, context)
    second = deferred(fire, operator(), context, first)
    result = fire(operator(), context, second)
    assert [(j["job_id"], j["state"]) for j in result["jobs"]] == [
        ("1000", "REQUEUE_HOLD"),
        ("1001", "COMPLETED"),
    ]
    assert [r.url.path.rsplit("/", 1)[-1] for r in api.cancels] == ["1000"]


def test_fire_and_forget_is_unchanged(api: RealApi) -> None:
    result = operator(wait_for_completion=False).execute(make_context())
    assert result == {"job_id": "1000", "system": SYSTEM, "state": "SUBMITTED", "exit_code": None}


async def test_the_trigger_ends_on_a_requeue_slurm_gave_up_on_only_when_asked(
    api: RealApi,
) -> None:
    job = api.add_job(plan=["RUNNING", "REQUEUE_HOLD"])
    trigger = HpcJobTrigger(
        job_id=job.job_id, system=SYSTEM, poll_interval=0.001, end_on_requeue_hold=True
    )
    assert trigger.serialize()[1]["end_on_requeue_hold"] is True
    event = await anext(trigger.run())
    assert (event.payload["status"], event.payload["state"]) == ("failed", "REQUEUE_HOLD")
    held = api.add_job(plan=["RUNNING", "REQUEUE_HOLD"])
    waiting = HpcJobTrigger(
        job_id=held.job_id, system=SYSTEM, poll_interval=0.001, deadline=time.time() + 0.5
    )
    event = await anext(waiting.run())  # without the opt-in: still waiting at the deadline
    assert (event.payload["status"], event.payload["state"]) == ("timeout", "REQUEUE_HOLD")
