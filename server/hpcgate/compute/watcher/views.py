"""What the watcher keeps and hands out: views of jobs, their events, subscriptions."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from hpcgate.compute.jobs import is_array_summary, is_terminal
from hpcgate.compute.scheduler.models import Job

QUEUE_LIMIT = 1024
"""Events queued for one subscriber; a consumer that falls this far behind is
closed (an SSE client resumes with ``Last-Event-ID``)."""


def signature(job: Job) -> tuple[str, ...]:
    """What counts as a change: the state, and for an array summary each task's state."""
    states = [job.status.state]
    if is_array_summary(job):
        states.extend(f"{task.id}={task.status.state}" for task in job.tasks or [])
    return tuple(states)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A job's state as observed at a change; ``seq`` is the event id."""

    seq: int
    job: Job

    @property
    def terminal(self) -> bool:
        return is_terminal(self.job)


class JobView:
    """What the watcher knows of one watched id."""

    __slots__ = (
        "final",
        "history",
        "job",
        "observed",
        "retain",
        "sig",
        "terminal_at",
        "view_id",
    )

    def __init__(self, view_id: str, job: Job, event: JobEvent, observed: float, history: int):
        self.view_id = view_id
        self.job = job
        self.observed = observed
        self.sig = signature(job)
        self.history: deque[JobEvent] = deque([event], maxlen=history)
        self.terminal_at: float | None = observed if is_terminal(job) else None
        self.final = False
        # its owner showed interest: kept for retention_seconds after interest ends
        self.retain = False

    @property
    def owner(self) -> str | None:
        return self.job.user

    @property
    def seq(self) -> int:
        return self.history[-1].seq

    @property
    def terminal(self) -> bool:
        return is_terminal(self.job)

    def events_after(self, seq: int | None) -> list[JobEvent]:
        """Events newer than ``seq``; without one, the current state as one event."""
        if seq is None:
            return [self.history[-1]]
        return [event for event in self.history if event.seq > seq]


class Subscription:
    """A consumer's queue of events: one job id, several, or all of a user's jobs.

    At most ``QUEUE_LIMIT`` events wait; past that ``overflowed`` is set and further
    events are dropped (the consumer should end and resume)."""

    def __init__(self, user: str, view_ids: frozenset[str] | None, kind: str) -> None:
        self.user = user
        self.view_ids = view_ids
        self.kind = kind
        self.overflowed = False
        self.queue: asyncio.Queue[tuple[str, JobEvent]] = asyncio.Queue(QUEUE_LIMIT)

    def deliver(self, view_id: str, event: JobEvent) -> None:
        try:
            self.queue.put_nowait((view_id, event))
        except asyncio.QueueFull:
            self.overflowed = True
