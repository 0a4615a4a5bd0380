"""The rules of jobs, whatever the workload manager: states, ids, array summaries.

Written once here and used by the scheduler backends, the job watcher, the routes and
(through the wire, as the server's answers) the provider. Nothing here runs or
parses a command: a second scheduler backend reuses these rules as they are.

* States are the wire's words (FirecREST v2 reports the workload manager's). A job
  is *terminal* once it ended; *final* once it ended in a state it does not leave
  on its own (unlike ``PREEMPTED`` or ``NODE_FAIL``, after which a job may be
  requeued), so a final answer can be cached and a final view stops being polled.
* Ids: a job ``123``, an array task ``123_4`` (task 4 of array 123) or a
  heterogeneous job's component ``123+1``. An array's own id names all its tasks.
* An array answers as one ``Job``: ``summarize_array``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from hpcgate import errors
from hpcgate.compute.ids import JOB_ID
from hpcgate.compute.scheduler.models import Job, JobStatus, JobTask, JobTime

# ---------------------------------------------------------------- states

PENDING = "PENDING"
COMPLETED = "COMPLETED"

TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
"""The job ended (every other state is active: pending, running, completing...)."""

FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "DEADLINE"}
)
"""Ended states a job does not leave on its own (unlike PREEMPTED or NODE_FAIL, which
requeue): answers in these states may be cached, views in them are no longer polled."""


def is_terminal(job: Job) -> bool:
    """The job ended (for an array summary: every task ended)."""
    return job.status.state in TERMINAL_STATES


def is_final(job: Job) -> bool:
    """The job and each of its tasks (steps, or an array's tasks) are in final states."""
    states = [job.status.state, *(task.status.state for task in job.tasks or [])]
    return all(state in FINAL_STATES for state in states)


# ---------------------------------------------------------------- ids

JOB_ID_PATTERN = re.compile(JOB_ID)
"""A job (``123``), an array task (``123_4``) or a heterogeneous component (``123+1``)."""


def validate_job_id(job_id: str) -> str:
    """``job_id`` if it is a well-formed job id, else ``BadRequest``."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        shown = job_id[:40] if isinstance(job_id, str) else type(job_id).__name__
        raise errors.BadRequest(
            f"Invalid job id {shown!r}: expected digits, optionally _<array index>"
        )
    return job_id


def top_id(job_id: str) -> str:
    """The array of an array task (``123_4`` → ``123``); other ids unchanged."""
    return job_id.split("_", 1)[0]


def is_array_task(job_id: str) -> bool:
    """``123_4``: one task of an array."""
    return "_" in job_id


def is_task_of(job_id: str, array_id: str) -> bool:
    """``job_id`` is a task of the array ``array_id`` (``123_4`` of ``123``)."""
    return not is_array_task(array_id) and job_id.startswith(f"{array_id}_")


def id_sort_key(job_id: str) -> tuple[int, int, str]:
    """Order ids by job number, an array's tasks by index after the array itself."""
    base, _, index = job_id.partition("_")
    head = base.split("+", 1)[0]
    return (int(head) if head.isdigit() else 0, int(index) if index.isdigit() else -1, job_id)


def job_sort_key(job: Job) -> tuple[int, int]:
    """Order jobs by id, array tasks by index."""
    base, _, index = job.job_id.partition("_")
    head = re.match(r"\d+", base)
    return (int(head.group()) if head else 0, int(index) if index.isdigit() else -1)


def records_named(job_id: str, jobs: Iterable[Job]) -> list[Job]:
    """The records ``job_id`` names: the job itself, else (an array id) its tasks in order."""
    jobs = list(jobs)
    exact = [job for job in jobs if job.job_id == job_id]
    if exact:
        return exact
    return sorted((job for job in jobs if is_task_of(job.job_id, job_id)), key=job_sort_key)


# ---------------------------------------------------------------- records


def _fill(primary: JobTime, secondary: JobTime) -> JobTime:
    merged = {
        name: value if value is not None else getattr(secondary, name)
        for name, value in primary.model_dump(by_alias=False).items()
    }
    return JobTime(**merged)


def merge_records(active: Iterable[Job], accounted: Iterable[Job]) -> list[Job]:
    """The controller's records completed by accounting's, ordered by id.

    Controller records win; accounting adds the jobs the controller no longer holds,
    the steps (``tasks``) and the fields the controller does not report (times it
    lacks, ``killRequestUser``). Accounting records the controller supersedes must
    be dropped first (``Scheduler.drop_stale``).
    """
    by_id = {job.job_id: job for job in accounted}
    merged = []
    for job in active:
        old = by_id.pop(job.job_id, None)
        if old is not None:
            job = job.model_copy(
                update={
                    "tasks": old.tasks,
                    "time": _fill(job.time, old.time),
                    "kill_request_user": job.kill_request_user or old.kill_request_user,
                }
            )
        merged.append(job)
    merged.extend(by_id.values())
    return sorted(merged, key=job_sort_key)


# ---------------------------------------------------------------- arrays


def summarize_array(job_id: str, elements: Sequence[Job]) -> Job:
    """One ``Job`` for the array ``job_id`` from its tasks' records (``elements``).

    The server's rule, the only one (the provider shows what the server answers).
    Tasks are taken in index order:

    * ``status``: while any task is active, the first active task that is not
      PENDING (running, completing, suspended...), else the first active task
      (PENDING). Once every task ended: the first task whose state is not
      COMPLETED, else COMPLETED. ``stateReason`` and ``killRequestUser`` are that
      task's. ``exitCode`` and ``interruptSignal`` are the highest among the tasks
      that have one (None when none has), whichever task the state came from.
    * ``time``: the latest ``elapsed``, the earliest ``start``, the latest ``end``
      once every task ended (None before); ``suspended`` and ``limit`` of the first.
    * ``allocationNodes`` and ``priority``: the highest; ``nodes``: every task's
      node list, each once, comma-joined; the other fields: the first task's.
    * ``tasks``: each task's id, name, status and time.
    """
    elements = sorted(elements, key=job_sort_key)
    first = elements[0]
    states = [e.status.state for e in elements]
    active = [e for e in elements if e.status.state not in TERMINAL_STATES]
    if active:
        lead = next((e for e in active if e.status.state != PENDING), active[0])
    else:
        lead = next((e for e in elements if e.status.state != COMPLETED), first)
    exits = [e.status.exit_code for e in elements if e.status.exit_code is not None]
    signals = [e.status.interrupt_signal for e in elements if e.status.interrupt_signal is not None]
    starts = [e.time.start for e in elements if e.time.start is not None]
    ends = [e.time.end for e in elements if e.time.end is not None]
    elapsed = [e.time.elapsed for e in elements if e.time.elapsed is not None]
    nodes = list(dict.fromkeys(n for e in elements for n in [e.nodes] if n))
    priorities = [e.priority for e in elements if e.priority is not None]
    return first.model_copy(
        update={
            "job_id": job_id,
            "status": JobStatus(
                state=lead.status.state if states else "UNKNOWN",
                state_reason=lead.status.state_reason,
                exit_code=max(exits) if exits else None,
                interrupt_signal=max(signals) if signals else None,
            ),
            "tasks": [
                JobTask(id=e.job_id, name=e.name, status=e.status, time=e.time) for e in elements
            ],
            "time": JobTime(
                elapsed=max(elapsed) if elapsed else None,
                start=min(starts) if starts else None,
                end=max(ends) if ends and not active else None,
                suspended=first.time.suspended,
                limit=first.time.limit,
            ),
            "allocation_nodes": max(e.allocation_nodes for e in elements),
            "nodes": ",".join(nodes),
            "priority": max(priorities) if priorities else None,
            "kill_request_user": lead.kill_request_user,
        }
    )


def is_array_summary(job: Job) -> bool:
    """``job`` is an array's summary: an array id whose ``tasks`` are array tasks."""
    return (
        bool(job.tasks)
        and not is_array_task(job.job_id)
        and all(is_array_task(task.id) for task in job.tasks or [])
    )


def as_answer(job_id: str, records: Sequence[Job]) -> Job:
    """The one ``Job`` a lookup of ``job_id`` answers from the records it names: the
    array's summary when they are all tasks of the array ``job_id``, else the first."""
    if not is_array_task(job_id) and all(is_task_of(job.job_id, job_id) for job in records):
        return summarize_array(job_id, records)
    return records[0]
