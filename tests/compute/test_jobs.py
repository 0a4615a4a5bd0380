"""The job rules (``hpcgate.compute.jobs``): states, id grammar, merging, array summary."""

from __future__ import annotations

import pytest

from hpcgate import errors
from hpcgate.compute import jobs
from hpcgate.compute.jobs import (
    FINAL_STATES,
    TERMINAL_STATES,
    as_answer,
    id_sort_key,
    is_array_summary,
    is_array_task,
    is_final,
    is_task_of,
    is_terminal,
    job_sort_key,
    merge_records,
    records_named,
    summarize_array,
    top_id,
    validate_job_id,
)
from hpcgate.compute.scheduler.models import Job, JobStatus, JobTask, JobTime


def job(
    job_id: str,
    state: str,
    *,
    exit_code: int | None = None,
    signal: int | None = None,
    reason: str | None = None,
    start: int | None = None,
    end: int | None = None,
    elapsed: int | None = None,
    nodes: str = "",
    priority: int | None = None,
    tasks: list[JobTask] | None = None,
    killer: str | None = None,
) -> Job:
    return Job(
        job_id=job_id,
        name=f"n{job_id}",
        status=JobStatus(
            state=state, state_reason=reason, exit_code=exit_code, interrupt_signal=signal
        ),
        tasks=tasks,
        time=JobTime(start=start, end=end, elapsed=elapsed, limit=10),
        allocation_nodes=1,
        cluster="c",
        nodes=nodes,
        partition="p",
        user="u",
        working_directory="/w",
        priority=priority,
        kill_request_user=killer,
    )


def step(step_id: str, state: str) -> JobTask:
    return JobTask(id=step_id, name="s", status=JobStatus(state=state), time=JobTime())


# ---------------------------------------------------------------- states


def test_final_states_are_terminal_and_requeueable_ones_are_not_final() -> None:
    assert FINAL_STATES <= TERMINAL_STATES
    for state in ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "REVOKED", "SPECIAL_EXIT"):
        assert state in TERMINAL_STATES and state not in FINAL_STATES
    for state in ("PENDING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"):
        assert state not in TERMINAL_STATES


def test_terminal_and_final_jobs() -> None:
    assert is_terminal(job("1", "TIMEOUT")) and not is_terminal(job("1", "RUNNING"))
    assert is_final(job("1", "COMPLETED", tasks=[step("1.batch", "COMPLETED")]))
    assert not is_final(job("1", "COMPLETED", tasks=[step("1.batch", "RUNNING")]))
    assert not is_final(job("1", "PREEMPTED"))


def test_the_rules_name_no_scheduler_command() -> None:
    source = open(jobs.__file__, encoding="utf-8").read()
    for word in ("squeue", "sacct", "sbatch", "scontrol", "slurm", "Slurm"):
        assert word not in source


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize("good", ["1", "123", "123_4", "123+1", "9" * 20, f"1_{'9' * 10}"])
def test_valid_job_ids(good: str) -> None:
    assert validate_job_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "abc", "-1", "1_", "_1", "1__2", "1_2_3", "1+", "1 2", "1\n", "9" * 21, "1;ls"]
)
def test_invalid_job_ids(bad: str) -> None:
    with pytest.raises(errors.BadRequest):
        validate_job_id(bad)


def test_id_grammar() -> None:
    assert top_id("123_4") == "123" and top_id("123") == "123" and top_id("7+1") == "7+1"
    assert is_array_task("123_4") and not is_array_task("123") and not is_array_task("7+1")
    assert is_task_of("123_4", "123") and not is_task_of("1234", "123")
    assert not is_task_of("123_4", "12") and not is_task_of("123_4_5", "123_4")
    ids = ["10", "9_10", "9_2", "9", "7+1", "x"]
    assert sorted(ids, key=id_sort_key) == ["x", "7+1", "9", "9_2", "9_10", "10"]
    assert sorted([job("9_10", "R"), job("9_2", "R"), job("8", "R")], key=job_sort_key) == [
        job("8", "R"),
        job("9_2", "R"),
        job("9_10", "R"),
    ]


def test_records_named() -> None:
    records = [job("7_1", "RUNNING"), job("70", "RUNNING"), job("7_0", "PENDING"), job("8", "R")]
    assert [j.job_id for j in records_named("7", records)] == ["7_0", "7_1"]
    assert [j.job_id for j in records_named("7_1", records)] == ["7_1"]
    assert [j.job_id for j in records_named("8", records)] == ["8"]
    assert records_named("9", records) == [] and records_named("7_5", records) == []


# ---------------------------------------------------------------- merging


def test_merge_records_prefers_the_controller_and_fills_from_accounting() -> None:
    active = job("12", "COMPLETED", exit_code=0, start=5)
    accounted = job(
        "12", "RUNNING", start=1, end=9, tasks=[step("12.batch", "COMPLETED")], killer="k"
    )
    merged = merge_records([active], [accounted, job("3", "FAILED")])
    assert [j.job_id for j in merged] == ["3", "12"]
    twelve = merged[1]
    assert twelve.status.state == "COMPLETED" and twelve.status.exit_code == 0
    assert twelve.time.start == 5 and twelve.time.end == 9
    assert twelve.tasks == accounted.tasks and twelve.kill_request_user == "k"


# ---------------------------------------------------------------- arrays


def test_summary_while_tasks_are_active_takes_the_first_task_not_pending() -> None:
    tasks = [
        job("7_2", "RUNNING", reason="None"),
        job("7_0", "COMPLETED", exit_code=0),
        job("7_1", "PENDING", reason="Priority"),
        job("7_3", "COMPLETING"),
    ]
    summary = summarize_array("7", tasks)
    assert summary.status.state == "RUNNING" and summary.status.state_reason == "None"
    assert summary.time.end is None
    pending = summarize_array("7", [job("7_1", "PENDING", reason="Priority"), job("7_0", "FAILED")])
    assert pending.status.state == "PENDING" and pending.status.state_reason == "Priority"


def test_summary_of_an_ended_array_is_the_first_task_not_completed() -> None:
    tasks = [
        job("7_3", "TIMEOUT", exit_code=0, signal=15, end=40),
        job("7_0", "COMPLETED", exit_code=0, end=10),
        job("7_2", "CANCELLED", exit_code=0, signal=9, end=30, killer="admin"),
        job("7_1", "FAILED", exit_code=2, end=20),
    ]
    summary = summarize_array("7", tasks)
    # the first task (by index) whose state is not COMPLETED gives the state...
    assert summary.status.state == "FAILED"
    # ...the exit code and the signal are the highest of any task
    assert summary.status.exit_code == 2 and summary.status.interrupt_signal == 15
    assert summary.kill_request_user is None  # the lead task's
    assert summary.time.end == 40
    assert [t.id for t in summary.tasks or []] == ["7_0", "7_1", "7_2", "7_3"]
    # not the worst state, not the first non-zero exit code: the highest
    later = summarize_array(
        "7", [job("7_0", "CANCELLED", exit_code=1), job("7_1", "FAILED", exit_code=5)]
    )
    assert later.status.state == "CANCELLED" and later.status.exit_code == 5


def test_summary_of_a_completed_array() -> None:
    summary = summarize_array("7", [job("7_1", "COMPLETED", exit_code=0), job("7_0", "COMPLETED")])
    assert summary.status.state == "COMPLETED" and summary.status.exit_code == 0
    assert summary.job_id == "7" and summary.name == "n7_0"


def test_summary_times_nodes_and_priority() -> None:
    tasks = [
        job("7_0", "COMPLETED", start=10, end=20, elapsed=10, nodes="n1", priority=3),
        job("7_1", "COMPLETED", start=5, end=30, elapsed=25, nodes="n2", priority=7),
        job("7_2", "COMPLETED", start=None, end=None, nodes="n1"),
    ]
    summary = summarize_array("7", tasks)
    assert (summary.time.start, summary.time.end, summary.time.elapsed) == (5, 30, 25)
    assert summary.time.limit == 10
    assert summary.nodes == "n1,n2" and summary.priority == 7


def test_as_answer_and_array_summaries() -> None:
    tasks = [job("7_0", "RUNNING"), job("7_1", "PENDING")]
    summary = as_answer("7", tasks)
    assert summary.job_id == "7" and is_array_summary(summary)
    assert as_answer("7_1", [tasks[1]]).job_id == "7_1"
    # the array task answering to its own numeric id is not summarized
    assert as_answer("8", [tasks[0]]).job_id == "7_0"
    assert not is_array_summary(job("7", "RUNNING", tasks=[step("7.batch", "RUNNING")]))
    assert not is_array_summary(job("7", "RUNNING"))
