"""What the watcher keeps and hands out: views of jobs, their events, subscriptions."""

from __future__ import annotations

import asyncio
from collections import deque

from hpcgate.compute.jobs import is_array_summary, is_terminal
from hpcgate.compute.scheduler.models import Job
from hpcgate.compute.watcher import deadlines

QUEUE_LIMIT = 1024
"""Events queued for one subscriber; a consumer that falls this far behind is
closed (an SSE client resumes with ``Last-Event-ID``)."""


def signature(job: Job) -> tuple[str, ...]:
    """What counts as a change: the state, and for an array summary each task's state."""
    states = [job.status.state]
    if is_array_summary(job):
        states.extend(f"{task.id}={task.status.state}" for task in job.tasks or [])
    return tuple(states)


class JobEvent:
    """A job's state as observed at a change; ``seq`` is the event id.

    ``job_json`` is the job's JSON, made once for every subscriber it goes to."""

    __slots__ = ("_json", "job", "seq")

    def __init__(self, seq: int, job: Job) -> None:
        self.seq = seq
        self.job = job
        self._json: str | None = None

    def __repr__(self) -> str:
        return f"JobEvent(seq={self.seq}, job_id={self.job.job_id!r})"

    @property
    def terminal(self) -> bool:
        return is_terminal(self.job)

    @property
    def job_json(self) -> str:
        if self._json is None:
            self._json = self.job.model_dump_json()
        return self._json


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


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Subscription:
    """A consumer's events: one job id, several, or all of a user's jobs.

    One small record per open stream or long-poll (ten thousand of them are held
    at once): the pending events in a list, and while the consumer waits, one
    future that a delivery, ``close()`` or the consumer's timeout resolves. At most
    ``QUEUE_LIMIT`` events wait; past that ``overflowed`` is set and further events
    are dropped (the consumer should end and resume)."""

    __slots__ = (
        "_instant",
        "_pending",
        "_waiter",
        "closed",
        "kind",
        "overflowed",
        "user",
        "view_ids",
    )

    def __init__(self, user: str, view_ids: frozenset[str] | None, kind: str) -> None:
        self.user = user
        self.view_ids = view_ids
        self.kind = kind
        self.overflowed = False
        self.closed = False
        self._pending: list[tuple[str, JobEvent]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._instant = 0  # of the waiter's timeout (``deadlines``)

    def deliver(self, view_id: str, event: JobEvent) -> None:
        """Queue ``event`` and wake the consumer; never blocks, never awaits."""
        if self.closed:
            return
        if len(self._pending) >= QUEUE_LIMIT:
            self.overflowed = True
        else:
            self._pending.append((view_id, event))
        if self._waiter is not None:
            _wake(self._waiter)

    def close(self) -> None:
        """The consumer is gone (its client disconnected): wake it to end."""
        self.closed = True
        if self._waiter is not None:
            _wake(self._waiter)

    def take(self) -> list[tuple[str, JobEvent]]:
        """The pending events, oldest first; none are left pending."""
        pending, self._pending = self._pending, []
        return pending

    def wait(self, timeout: float) -> asyncio.Future[None]:
        """Until an event is pending, the subscription is closed or overflowed, or
        ``timeout`` seconds have passed (``deadlines.TICK`` late at most): a future
        to await, no task, no coroutine frame and no timer of its own."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self._pending or self.closed or self.overflowed:
            waiter.set_result(None)
            return waiter
        self._waiter = waiter
        self._instant = deadlines.expire_after(waiter, timeout)
        waiter.add_done_callback(self._waited)
        return waiter

    def _waited(self, waiter: asyncio.Future[None]) -> None:
        """The wait ended (an event, the timeout, or its awaiting task cancelled)."""
        deadlines.forget(waiter, self._instant)
        if self._waiter is waiter:
            self._waiter = None

    @property
    def queue(self) -> _QueueView:
        """The pending events as a queue (``get``, ``empty``, ``qsize``)."""
        return _QueueView(self)


class _QueueView:
    """``Subscription.queue``: the ``asyncio.Queue`` subset simple consumers use."""

    __slots__ = ("_sub",)

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def get(self) -> tuple[str, JobEvent]:
        while not self._sub._pending:
            await self._sub.wait(3600.0)
        return self._sub._pending.pop(0)

    def empty(self) -> bool:
        return not self._sub._pending

    def qsize(self) -> int:
        return len(self._sub._pending)
