"""``squeue`` and ``sacct`` records as wire ``Job`` s, and how the two combine.

The controller (``squeue -t all``) holds active jobs and, for ``MinJobAge``, ended
ones; accounting (``sacct``) holds every job, with its steps, but lags the controller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hpcgate.compute.jobs import (
    PENDING,
    TERMINAL_STATES,
    job_sort_key,
    merge_records,
    records_named,
)
from hpcgate.compute.scheduler.models import Job, JobStatus, JobTask, JobTime
from hpcgate.compute.scheduler.slurm.fields import (
    decode_wait_status,
    none_if_empty,
    parse_duration,
    parse_epoch,
    parse_exit_code,
    parse_int,
    parse_state,
    parse_time_limit,
    split_records,
)

# ---------------------------------------------------------------- squeue

SQUEUE_FIELDS: tuple[str, ...] = (
    "JobID",
    "ArrayJobID",
    "ArrayTaskID",
    "Name",
    "State",
    "Reason",
    "exit_code",
    "TimeUsed",
    "StartTime",
    "EndTime",
    "TimeLimit",
    "Account",
    "NumNodes",
    "Cluster",
    "GroupName",
    "NodeList",
    "Partition",
    "UserName",
    "WorkDir",
    "PriorityLong",
)


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """A job as the controller lists it, with the raw id ``srun --jobid`` needs."""

    raw_id: str
    job: Job


def _canonical_id(job_id: str, array_job_id: str, array_task_id: str) -> str:
    if array_task_id.strip().isdigit() and array_job_id.strip().isdigit():
        return f"{array_job_id.strip()}_{array_task_id.strip()}"
    return job_id.strip()


def _reason(text: str) -> str | None:
    return none_if_empty(text)


def parse_squeue(output: str) -> list[ActiveJob]:
    """Jobs from ``squeue -h -r -O format_fields(SQUEUE_FIELDS)``."""
    jobs = []
    for f in split_records(output, len(SQUEUE_FIELDS)):
        row = dict(zip(SQUEUE_FIELDS, f, strict=True))
        state, _ = parse_state(row["State"])
        terminal = state in TERMINAL_STATES
        exit_code, signal = decode_wait_status(row["exit_code"]) if terminal else (None, None)
        job = Job(
            job_id=_canonical_id(row["JobID"], row["ArrayJobID"], row["ArrayTaskID"]),
            name=row["Name"],
            status=JobStatus(
                state=state,
                state_reason=_reason(row["Reason"]),
                exit_code=exit_code,
                interrupt_signal=signal,
            ),
            time=JobTime(
                elapsed=parse_duration(row["TimeUsed"]),
                # a pending job's StartTime/EndTime are forecasts, not facts
                start=parse_epoch(row["StartTime"]) if state != PENDING else None,
                end=parse_epoch(row["EndTime"]) if terminal else None,
                limit=parse_time_limit(row["TimeLimit"]),
            ),
            account=none_if_empty(row["Account"]),
            allocation_nodes=parse_int(row["NumNodes"]) or 0,
            cluster=row["Cluster"],
            group=none_if_empty(row["GroupName"]),
            nodes=none_if_empty(row["NodeList"]) or "",
            partition=row["Partition"],
            user=none_if_empty(row["UserName"]),
            working_directory=row["WorkDir"],
            priority=parse_int(row["PriorityLong"]),
        )
        jobs.append(ActiveJob(raw_id=row["JobID"].strip(), job=job))
    return jobs


# ---------------------------------------------------------------- sacct

SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "JobName",
    "State",
    "ExitCode",
    "Reason",
    "ElapsedRaw",
    "Start",
    "End",
    "Suspended",
    "TimelimitRaw",
    "Account",
    "NNodes",
    "Cluster",
    "Group",
    "NodeList",
    "Partition",
    "User",
    "UID",
    "WorkDir",
    "Priority",
)


def _sacct_time(row: dict[str, str], *, limit: bool) -> JobTime:
    return JobTime(
        elapsed=parse_int(row["ElapsedRaw"]),
        start=parse_epoch(row["Start"]),
        end=parse_epoch(row["End"]),
        suspended=parse_duration(row["Suspended"]),
        limit=parse_time_limit(row["TimelimitRaw"]) if limit else None,
    )


def _sacct_status(row: dict[str, str]) -> tuple[JobStatus, str | None]:
    state, killer = parse_state(row["State"])
    ended = state in TERMINAL_STATES
    exit_code, signal = parse_exit_code(row["ExitCode"]) if ended else (None, None)
    status = JobStatus(
        state=state,
        state_reason=_reason(row["Reason"]),
        exit_code=exit_code,
        interrupt_signal=signal,
    )
    return status, killer


def parse_sacct(output: str) -> list[Job]:
    """Jobs, with their steps as ``tasks``, from ``sacct -n -p --delimiter=FIELD_SEP``."""
    jobs: dict[str, Job] = {}
    steps: dict[str, list[JobTask]] = {}
    for f in split_records(output, len(SACCT_FIELDS)):
        row = dict(zip(SACCT_FIELDS, f, strict=True))
        job_id = row["JobID"].strip()
        status, killer = _sacct_status(row)
        if "." in job_id:
            parent = job_id.split(".", 1)[0]
            task = JobTask(
                id=job_id, name=row["JobName"], status=status, time=_sacct_time(row, limit=False)
            )
            steps.setdefault(parent, []).append(task)
            continue
        kill_user = None
        if killer is not None:
            kill_user = row["User"] if killer == row["UID"].strip() else killer
        jobs[job_id] = Job(
            job_id=job_id,
            name=row["JobName"],
            status=status,
            time=_sacct_time(row, limit=True),
            account=none_if_empty(row["Account"]),
            allocation_nodes=parse_int(row["NNodes"]) or 0,
            cluster=row["Cluster"],
            group=none_if_empty(row["Group"]),
            nodes=(none_if_empty(row["NodeList"]) or "").replace("None assigned", ""),
            partition=row["Partition"],
            kill_request_user=kill_user,
            user=none_if_empty(row["User"]),
            working_directory=row["WorkDir"],
            priority=parse_int(row["Priority"]),
        )
    for job_id, tasks in steps.items():
        if job_id in jobs:
            jobs[job_id] = jobs[job_id].model_copy(update={"tasks": tasks})
    return list(jobs.values())


def drop_stale(active: Iterable[Job], accounted: Iterable[Job]) -> list[Job]:
    """Accounting rows that do not contradict the controller.

    For a second or so after an array's tasks start, sacct still shows the array as
    one record (``47`` or ``47_[0-2]``) while squeue lists ``47_0``, ``47_1``...:
    such a record is dropped when the controller lists tasks of that array.
    """
    arrays = {job.job_id.split("_", 1)[0] for job in active if "_" in job.job_id}
    return [
        job
        for job in accounted
        if not (job.job_id in arrays or job.job_id.split("_[", 1)[0] in arrays)
    ]


def merge_jobs(active: Iterable[Job], accounted: Iterable[Job]) -> list[Job]:
    """``merge_records`` of the controller's and accounting's records, after dropping
    the accounting records the controller supersedes (``drop_stale``)."""
    active = list(active)
    return merge_records(active, drop_stale(active, accounted))


def select_entries(job_id: str, jobs: Iterable[Job]) -> list[Job]:
    """The records that ``job_id`` names: the job, or all tasks of an array."""
    jobs = list(jobs)
    named = records_named(job_id, jobs)
    if named:
        return named
    # Slurm also answers to an array task's own numeric id
    return sorted(jobs, key=job_sort_key) if len(jobs) == 1 else []
