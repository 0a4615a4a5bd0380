"""A scripted scheduler for watcher unit tests: jobs whose states the test sets."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hpcgate import errors
from hpcgate.compute.jobs import TERMINAL_STATES
from hpcgate.compute.scheduler.models import Job, JobStatus, JobTask, JobTime
from hpcgate.config import SystemSettings


@dataclass(frozen=True)
class Listed:
    raw_id: str
    job: Job


def make_job(job_id: str, state: str, user: str = "alice", *, steps: bool = False) -> Job:
    ended = state in TERMINAL_STATES
    status = JobStatus(state=state, exit_code=0 if ended else None)
    tasks = None
    if steps:
        tasks = [JobTask(id=f"{job_id}.batch", name="batch", status=status, time=JobTime())]
    return Job(
        job_id=job_id,
        name="job",
        status=status,
        tasks=tasks,
        time=JobTime(),
        allocation_nodes=1,
        cluster="c",
        nodes="",
        partition="p",
        user=user,
        working_directory="/w",
    )


class FakeRunner:
    def __init__(self, username: str) -> None:
        self.username = username


class FakeScheduler:
    """The controller holds ``jobs`` (id → (state, user)); accounting mirrors ended ones.

    A second backend as the watcher sees it: the ``Scheduler`` methods the watcher
    calls (``active_jobs``, ``accounted_jobs``, ``drop_stale``) and ``job`` for the
    routes' lookups, nothing of Slurm."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[str, str]] = {}
        self.purged: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.delay = 0.0
        self.settings = SystemSettings.model_fields["scheduler"].default

    def set(self, job_id: str, state: str, user: str = "alice") -> None:
        self.jobs[job_id] = (state, user)

    def _matches(self, job_id: str, wanted: Sequence[str]) -> bool:
        return any(job_id == w or job_id.startswith(f"{w}_") for w in wanted)

    async def active_jobs(
        self, runner: FakeRunner, *, users: Sequence[str] = (), job_ids: Sequence[str] = ()
    ) -> list[Listed]:
        self.calls["squeue"] += 1
        await asyncio.sleep(self.delay)
        return [
            Listed(job_id, make_job(job_id, state, user))
            for job_id, (state, user) in sorted(self.jobs.items())
            if job_id not in self.purged
            and (not users or user in users)
            and (not job_ids or self._matches(job_id, job_ids))
        ]

    async def accounted_jobs(self, runner: FakeRunner, job_ids: Sequence[str]) -> list[Job]:
        self.calls["sacct"] += 1
        return [
            make_job(job_id, state, user, steps=True)
            for job_id, (state, user) in sorted(self.jobs.items())
            if self._matches(job_id, job_ids) and state in TERMINAL_STATES
        ]

    def drop_stale(self, listed: Sequence[Job], accounted: Sequence[Job]) -> list[Job]:
        return list(accounted)  # this accounting never lags the controller

    async def job(self, runner: FakeRunner, job_id: str) -> Job:
        self.calls["lookup"] += 1
        if job_id not in self.jobs:
            raise errors.NotFound(f"Job not found: {job_id}")
        state, user = self.jobs[job_id]
        return make_job(job_id, state, user, steps=state in TERMINAL_STATES)
