"""The shared job watcher: one polling loop per system, whatever the number of clients.

Clients (event streams, long-polls, repeated GETs) register interest in jobs; per
round the watcher runs, per *scope*, ONE ``squeue -t all`` for the watched jobs and,
when some of them ended, left the controller or were never seen, ONE ``sacct -j``
for those, then publishes each job's state changes to its subscribers. A scope is
the identity the commands run as: the system's service identity (``service_user``,
one scope for all users), or each interested user in per-user mode.

* Trust: a scope's views are fed only by commands run as the scope's own identity.
  Everything a command prints as user B comes through B's login shell, which B
  controls, so an answer B's session gave never reaches a view other users read:
  in the service scope only the service identity's rounds write views (a caller's
  own lookup, ``observe(...)``, only asks for the job to be watched); a per-user
  scope is fed and read by its user alone. Jobs the rounds have not seen are looked
  up by the next round, as the scope's identity, all in the same batched commands.
* Selection: ``squeue -u <users>`` when someone follows all of a user's jobs, else
  ``squeue -j <ids>`` for the watched ids (ids whose job ended and settled are no
  longer polled: they cannot change; ids no command knows are dropped).
* Interval: ``min_interval`` while a watched job is pending/running/completing, or
  changed in the last round, or a new waiter needs a first observation;
  ``max_interval`` when only ended jobs are watched; no rounds without interest. Two
  rounds of a scope never start less than ``min_interval`` apart, so any number of
  new waiters cost at most one round per ``min_interval``.
* Views: per watched id (a job, an array: its summary, an array task) the latest
  ``Job`` as ``GET /compute/{system}/jobs/{id}`` answers it, with its recent events.
  A view is *fresh* while younger than the scope's interval; a view whose job ended
  and whose accounting settled is final and always fresh.
* Events: one per observed change of a job's state (for an array: of the summary's
  or any task's state). Ids are increasing per system (milliseconds since the epoch,
  bumped when equal), so they also increase across restarts of the server.
* Visibility: views carry the job's owner; every consumer API takes the caller's
  user name and answers per ``hpcgate.compute.scheduler.visibility`` (``NotFound``, as for
  an unknown id, otherwise). All-jobs subscriptions are the caller's own jobs.
* Bounds: open streams and long-polls per user and in all (``acquire``: 429/503),
  leases per user (the oldest go), views kept after interest ends only for their
  owner and at most ``max_leases_per_user`` per owner, events queued per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from hpcgate import errors
from hpcgate.cluster.remote import CommandRunner
from hpcgate.compute.scheduler.base import Scheduler, validate_job_id
from hpcgate.compute.scheduler.models import Job
from hpcgate.compute.scheduler.slurm import FINAL_STATES
from hpcgate.compute.scheduler.slurm_parsing import (
    TERMINAL_STATES,
    drop_stale,
    job_sort_key,
    merge_jobs,
    summarize_array,
)
from hpcgate.compute.scheduler.visibility import JobVisibility, ensure_visible, may_see
from hpcgate.config import SystemSettings, WatcherSettings
from hpcgate.operations.metrics import Metrics, command_source

log = logging.getLogger(__name__)

RunnerFactory = Callable[[str], CommandRunner]

QUEUE_LIMIT = 1024
"""Events queued for one subscriber; a consumer that falls this far behind is
closed (an SSE client resumes with ``Last-Event-ID``)."""

SLOT_RETRY_AFTER = 5
"""Retry-After (seconds) of a 429 for a user's full stream budget."""


def is_terminal(job: Job) -> bool:
    """The job ended (for an array summary: every task ended)."""
    return job.status.state in TERMINAL_STATES


def signature(job: Job) -> tuple[str, ...]:
    """What counts as a change: the state, and for an array summary each task's state."""
    states = [job.status.state]
    if job.tasks and "_" not in job.job_id and all("_" in task.id for task in job.tasks):
        states.extend(f"{task.id}={task.status.state}" for task in job.tasks)
    return tuple(states)


def _is_final(job: Job) -> bool:
    items = [job, *(job.tasks or [])]
    return all(item.status.state in FINAL_STATES for item in items)


def _id_key(job_id: str) -> tuple[int, int, str]:
    base, _, index = job_id.partition("_")
    head = base.split("+", 1)[0]
    return (int(head) if head.isdigit() else 0, int(index) if index.isdigit() else -1, job_id)


def top_id(job_id: str) -> str:
    """``123_4`` → ``123``; other ids unchanged."""
    return job_id.split("_", 1)[0]


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


class Slot:
    """One open stream's or long-poll's place in the subscriber budgets (the system's
    and its user's). ``release()`` gives it back: idempotent, and done at garbage
    collection at the latest, so no path can leak a user's quota."""

    __slots__ = ("_release", "kind", "user")

    def __init__(self, user: str, kind: str, release: Callable[[Slot], None]) -> None:
        self.user = user
        self.kind = kind
        self._release: Callable[[Slot], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(self)

    def __del__(self) -> None:
        self.release()


@dataclass
class _Scope:
    """One polling identity and everything watched through it."""

    user: str
    views: dict[str, JobView] = field(default_factory=dict)
    # per user: job id -> until when a GET (or a closed stream) keeps it watched,
    # least recently renewed first
    leases: dict[str, OrderedDict[str, float]] = field(default_factory=dict)
    watches: Counter[tuple[str, str]] = field(default_factory=Counter)
    all_jobs: Counter[str] = field(default_factory=Counter)
    subs_by_view: dict[str, set[Subscription]] = field(default_factory=dict)
    subs_all: dict[str, set[Subscription]] = field(default_factory=dict)
    # ids callers are waiting for a round to show them (whatever the leases)
    wanted: Counter[str] = field(default_factory=Counter)
    # ids a round looked up (squeue and sacct) and found nowhere -> that round's start
    missing: dict[str, float] = field(default_factory=dict)
    failed_at: float = -math.inf
    interval: float = 0.0
    last_start: float = -math.inf
    last_done: float | None = None
    round_seconds: float = 0.0
    cursor: int = 0
    failures: int = 0
    urgent: bool = False
    waiting: list[asyncio.Future[None]] = field(default_factory=list)
    running: asyncio.Task[None] | None = None

    def leased(self, now: float) -> Iterable[tuple[str, str]]:
        for user, by_id in self.leases.items():
            for job_id, until in by_id.items():
                if until > now:
                    yield user, job_id

    def explicit_ids(self, now: float) -> set[str]:
        ids = {job_id for _, job_id in self.leased(now)}
        ids.update(job_id for (_, job_id), count in self.watches.items() if count > 0)
        ids.update(self.wanted)
        return ids

    def interested_users(self, now: float) -> set[str]:
        users = {user for user, _ in self.leased(now)}
        users.update(user for (user, _), count in self.watches.items() if count > 0)
        users.update(user for user, count in self.all_jobs.items() if count > 0)
        return users

    def poll_ids(self, now: float) -> list[str]:
        ids = [i for i in self.explicit_ids(now) if not (v := self.views.get(i)) or not v.final]
        return sorted(ids, key=_id_key)

    def follows_all(self) -> set[str]:
        return {user for user, count in self.all_jobs.items() if count > 0}

    def idle(self) -> bool:
        """Nothing left in it: a per-user scope may go."""
        return not (
            self.views
            or self.leases
            or self.watches
            or self.all_jobs
            or self.subs_by_view
            or self.subs_all
            or self.wanted
            or self.waiting
            or self.running
        )


class JobWatcher:
    """The watcher of one system. ``start()`` once the loop runs; ``close()`` at exit."""

    def __init__(
        self,
        system: SystemSettings,
        scheduler: Scheduler,
        runner_for: RunnerFactory,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.system = system.name
        self.settings: WatcherSettings = system.watcher
        self.service_user = system.service_user
        self.visibility: JobVisibility = system.scheduler.job_visibility
        self.scheduler = scheduler
        self._runner_for = runner_for
        self._metrics = metrics
        self._clock = clock
        self._scopes: dict[str, _Scope] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscribers: Counter[str] = Counter()
        self._held: Counter[str] = Counter()
        self._held_total = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"watcher-{self.system}")

    async def close(self) -> None:
        tasks = [t for t in [self._task, *(s.running for s in self._scopes.values())] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        for scope in self._scopes.values():
            self._release_waiters(scope.waiting)
            scope.waiting = []

    # ------------------------------------------------------------ budgets

    def check_capacity(self, user: str | None = None) -> None:
        """``ServiceUnavailable`` when ``max_subscribers`` streams and long-polls are
        open; ``TooManyRequests`` when ``user`` holds ``max_subscribers_per_user``."""
        if self._held_total >= self.settings.max_subscribers:
            raise errors.ServiceUnavailable("Too many event subscribers; retry later")
        if user is not None and self._held[user] >= self.settings.max_subscribers_per_user:
            raise errors.TooManyRequests(
                f"At most {self.settings.max_subscribers_per_user} open event streams and "
                f"long-polls per user on system '{self.system}': close one or retry later",
                retry_after=SLOT_RETRY_AFTER,
            )

    def acquire(self, user: str, kind: str) -> Slot:
        """A place for one stream or long-poll of ``user`` (checked and taken at once,
        so concurrent requests cannot overshoot); ``release()`` it when it ends."""
        self.check_capacity(user)
        self._held[user] += 1
        self._held_total += 1
        return Slot(user, kind, self._give_back)

    def _give_back(self, slot: Slot) -> None:
        self._held_total -= 1
        self._held[slot.user] -= 1
        if self._held[slot.user] <= 0:
            del self._held[slot.user]

    def held(self, user: str) -> int:
        """Streams and long-polls ``user`` holds open now."""
        return self._held[user]

    # ------------------------------------------------------------ consumers

    def knows(self, user: str, job_id: str) -> bool:
        """Whether looking ``job_id`` up for ``user`` costs no command of its own: the
        caller's scope has a view of it, or the caller already has it watched."""
        scope = self._scope(user)
        return (
            job_id in scope.views
            or job_id in scope.leases.get(user, ())
            or bool(scope.watches.get((user, job_id)))
        )

    def cached(self, user: str, job_id: str) -> JobView | None:
        """The job if a fresh view of it exists and the caller may see it (no I/O);
        keeps it watched."""
        scope = self._scope(user)
        view = scope.views.get(job_id)
        if view is None or not self._may_see(user, view) or not self._fresh(scope, view):
            return None
        self._lease(scope, user, job_id)
        return view

    async def view(self, user: str, job_id: str) -> JobView:
        """A fresh view of a job the caller may see: from the cache, else from the
        next rounds of the caller's scope (which look jobs they have not seen up in
        accounting too, one batch for all callers), run as the scope's identity.

        ``NotFound`` for unknown jobs and for jobs the caller may not see;
        ``ServiceUnavailable`` when the rounds fail or do not come in time.
        """
        job_id = validate_job_id(job_id)
        scope = self._scope(user)
        view = scope.views.get(job_id)
        if view is not None and self._fresh(scope, view):
            return self._visible(scope, view, user, job_id)
        asked = self._clock()
        self._lease(scope, user, job_id)
        scope.wanted[job_id] += 1  # polled while we wait, whatever becomes of the lease
        try:
            deadline = asked + self._round_wait()
            while (remaining := deadline - self._clock()) > 0:
                with contextlib.suppress(TimeoutError):
                    await self.next_round(scope, timeout=remaining)
                view = scope.views.get(job_id)
                if view is not None and view.observed >= asked:
                    return self._visible(scope, view, user, job_id)
                if scope.missing.get(job_id, -math.inf) >= asked:
                    self._unlease(scope, user, job_id)
                    raise errors.NotFound(f"Job not found: {job_id}")
                if scope.failed_at >= asked:
                    break
        finally:
            scope.wanted[job_id] -= 1
            if scope.wanted[job_id] <= 0:
                del scope.wanted[job_id]
        raise errors.ServiceUnavailable(
            f"The state of job {job_id} is not available right now; retry later"
        )

    def observe(
        self,
        user: str,
        job_id: str,
        job: Job,
        *,
        observed: float | None = None,
        source: str | None = None,
    ) -> JobView | None:
        """Offer an answer that a command run as ``source`` (default: ``user``) gave
        at ``observed``; the caller's own job stays watched.

        Only answers of the scope's own identity feed its views. Another identity's
        answer (in service mode: any caller's, printed through the caller's login
        shell) is not written anywhere: the next round looks at the job as the
        service identity. Returns the view written, or None.
        """
        scope = self._scope(user)
        if job.user == user:
            self._lease(scope, user, job_id)
        if (source or user) != scope.user:
            return None
        when = self._clock() if observed is None else observed
        view = scope.views.get(job_id)
        if view is None or view.observed < when:
            # a lookup of an ended job includes its accounting
            view = self._update(scope, job_id, job, when, settled=job.tasks is not None)
        return view

    def subscribe(self, user: str, job_ids: Iterable[str] | None, kind: str) -> Subscription:
        """Receive the events of ``job_ids`` (None: all of ``user``'s jobs) until
        ``unsubscribe``; the jobs stay watched meanwhile. Budgets are the caller's
        business (``acquire``)."""
        scope = self._scope(user)
        ids = frozenset(job_ids) if job_ids is not None else None
        sub = Subscription(user, ids, kind)
        if ids is None:
            scope.all_jobs[user] += 1
            scope.subs_all.setdefault(user, set()).add(sub)
            scope.urgent = scope.urgent or scope.all_jobs[user] == 1
        else:
            for job_id in ids:
                scope.watches[(user, job_id)] += 1
                scope.subs_by_view.setdefault(job_id, set()).add(sub)
        self._subscribers[kind] += 1
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        scope = self._scope(sub.user)
        self._subscribers[sub.kind] -= 1
        if sub.view_ids is None:
            scope.all_jobs[sub.user] -= 1
            scope.subs_all.get(sub.user, set()).discard(sub)
            if not scope.subs_all.get(sub.user, True):
                del scope.subs_all[sub.user]
            if scope.all_jobs[sub.user] <= 0:
                del scope.all_jobs[sub.user]
            return
        for job_id in sub.view_ids:
            key = (sub.user, job_id)
            scope.watches[key] -= 1
            if scope.watches[key] <= 0:
                del scope.watches[key]
                # a client that reconnects soon finds the job still watched
                self._lease(scope, sub.user, job_id)
            subs = scope.subs_by_view.get(job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del scope.subs_by_view[job_id]

    async def all_views(self, user: str) -> list[JobView]:
        """The caller's own jobs the watcher knows, after a round that listed all of
        them (call ``subscribe(user, None, ...)`` first)."""
        scope = self._scope(user)
        with contextlib.suppress(TimeoutError):
            await self.next_round(scope)
        views = [
            view
            for view_id, view in scope.views.items()
            if view.owner == user and view_id == top_id(view_id)
        ]
        return sorted(views, key=lambda v: v.seq)

    async def next_round(self, scope: _Scope, *, timeout: float | None = None) -> None:
        """Wait for the end of the next round of ``scope`` that starts after this call."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        scope.waiting.append(future)
        scope.urgent = True
        self._wake.set()
        async with asyncio.timeout(self._round_wait() if timeout is None else timeout):
            await future

    def current(self, user: str, job_id: str) -> JobView | None:
        """The view of ``job_id`` in the caller's scope as it is now (no freshness
        check), if the caller may see it."""
        view = self._scope(user).views.get(job_id)
        return view if view is not None and self._may_see(user, view) else None

    def submitted(self, user: str, job_id: str) -> None:
        """A job was just submitted through this server: streams that follow all of
        the user's jobs learn about it at the next round, which comes soon."""
        scope = self._scope(user)
        if scope.all_jobs.get(user):
            scope.urgent = True
            self._wake.set()

    @property
    def scheduler_timeout(self) -> float:
        settings = getattr(self.scheduler, "settings", None)
        return float(getattr(settings, "timeout", 30.0))

    def stats(self) -> dict[str, float]:
        """Figures for the metrics: interval, lag, views, watched ids, subscribers."""
        now = self._clock()
        active = [s for s in self._scopes.values() if self._has_interest(s, now)]
        lag = age = 0.0
        for scope in active:
            if scope.last_done is not None:
                age = max(age, now - scope.last_done)
                lag = max(lag, now - scope.last_start - scope.interval)
        return {
            "interval": min((s.interval for s in active), default=self.settings.max_interval),
            "lag": max(0.0, lag),
            "data_age": age,
            "scopes": len(active),
            "views": sum(len(s.views) for s in self._scopes.values()),
            "watched": sum(len(s.explicit_ids(now)) for s in self._scopes.values()),
            "leases": sum(len(by_id) for s in self._scopes.values() for by_id in s.leases.values()),
            "followed_users": sum(len(s.follows_all()) for s in self._scopes.values()),
            "sse": self._subscribers["sse"],
            "longpoll": self._subscribers["longpoll"],
        }

    # ------------------------------------------------------------ internals

    def _scope(self, user: str) -> _Scope:
        name = self.service_user or user
        scope = self._scopes.get(name)
        if scope is None:
            scope = self._scopes[name] = _Scope(user=name, interval=self.settings.min_interval)
        return scope

    def _round_wait(self) -> float:
        """How long a caller waits for rounds at most."""
        return self.settings.min_interval + self.scheduler_timeout * 2 + 1

    def _fresh(self, scope: _Scope, view: JobView) -> bool:
        """Final, or observed within the fast interval (plus one round's duration): a
        job that can still change is watched at ``min_interval``."""
        if view.final:
            return True
        limit = self.settings.min_interval + min(scope.round_seconds, self.settings.min_interval)
        return self._clock() - view.observed <= limit

    def _may_see(self, user: str, view: JobView) -> bool:
        return may_see(user, view.owner, self.visibility)

    def _visible(self, scope: _Scope, view: JobView, user: str, job_id: str) -> JobView:
        """``view`` if the caller may see it; else ``NotFound`` (and no interest kept)."""
        try:
            ensure_visible(user, view.owner, self.visibility, job_id)
        except errors.NotFound:
            if not scope.watches.get((user, job_id)):
                self._unlease(scope, user, job_id)
            raise
        return view

    def _lease(self, scope: _Scope, user: str, job_id: str) -> None:
        """Keep ``job_id`` watched for ``user`` for ``interest_seconds``; a user holds at
        most ``max_leases_per_user`` leases (the least recently renewed go first)."""
        by_id = scope.leases.setdefault(user, OrderedDict())
        is_new = job_id not in by_id and not scope.watches.get((user, job_id))
        by_id[job_id] = self._clock() + self.settings.interest_seconds
        by_id.move_to_end(job_id)
        while len(by_id) > self.settings.max_leases_per_user:
            by_id.popitem(last=False)
        if is_new:
            self._wake.set()

    @staticmethod
    def _unlease(scope: _Scope, user: str, job_id: str) -> None:
        by_id = scope.leases.get(user)
        if by_id is not None:
            by_id.pop(job_id, None)
            if not by_id:
                del scope.leases[user]

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq

    def _update(
        self, scope: _Scope, view_id: str, job: Job, observed: float, *, settled: bool
    ) -> JobView:
        """Record an observation; publish an event when the state changed."""
        view = scope.views.get(view_id)
        if view is None:
            event = JobEvent(self._next_seq(), job)
            view = scope.views[view_id] = JobView(
                view_id, job, event, observed, self.settings.history
            )
            self._publish(scope, view, event)
        else:
            view.observed = max(view.observed, observed)
            sig = signature(job)
            if view.final and sig == view.sig:
                return view  # ended and settled: keep the accounted record
            view.job = job
            if sig != view.sig:
                view.sig = sig
                event = JobEvent(self._next_seq(), job)
                view.history.append(event)
                view.final = False
                self._publish(scope, view, event)
        if view.terminal:
            view.terminal_at = view.terminal_at or observed
            waited = observed - view.terminal_at
            view.final = (settled and _is_final(job)) or waited >= self.settings.settle_seconds
        else:
            view.terminal_at = None
            view.final = False
        return view

    def _publish(self, scope: _Scope, view: JobView, event: JobEvent) -> None:
        if self._metrics is not None:
            self._metrics.watcher_events.labels(self.system).inc()
        owner = view.owner
        for sub in scope.subs_by_view.get(view.view_id, ()):
            if self._may_see(sub.user, view):
                sub.deliver(view.view_id, event)
        if owner is not None and view.view_id == top_id(view.view_id):
            for sub in scope.subs_all.get(owner, ()):
                sub.deliver(view.view_id, event)

    def _has_interest(self, scope: _Scope, now: float) -> bool:
        return bool(scope.follows_all() or scope.poll_ids(now) or scope.waiting)

    def _due(self, scope: _Scope, now: float) -> float | None:
        """When the scope's next round should start, or None without interest."""
        if not self._has_interest(scope, now):
            return None
        due = scope.last_start + scope.interval
        if scope.urgent:
            due = min(due, scope.last_start + self.settings.min_interval)
        return due

    async def _loop(self) -> None:
        while True:
            now = self._clock()
            sleep = self.settings.max_interval
            for name, scope in list(self._scopes.items()):
                if scope.running is not None:
                    continue
                due = self._due(scope, now)
                if due is None:
                    if scope.waiting:
                        self._release_waiters(scope.waiting)
                        scope.waiting = []
                    self._expire(scope, now)
                    if name != self.service_user and scope.idle():
                        del self._scopes[name]
                    continue
                if due <= now:
                    scope.running = asyncio.create_task(self._round(scope))
                    scope.running.add_done_callback(lambda _, s=scope: self._round_done(s))
                else:
                    sleep = min(sleep, due - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(sleep, 0.01)):
                    await self._wake.wait()

    def _round_done(self, scope: _Scope) -> None:
        scope.running = None
        self._wake.set()

    @staticmethod
    def _release_waiters(waiting: list[asyncio.Future[None]]) -> None:
        for future in waiting:
            if not future.done():
                future.set_result(None)

    async def _round(self, scope: _Scope) -> None:
        started = self._clock()
        scope.last_start = started
        scope.urgent = False
        waiting, scope.waiting = scope.waiting, []
        command_source.set("watcher")
        outcome = "ok"
        try:
            changed = await self._poll(scope, started)
            scope.failures = 0
            scope.last_done = self._clock()
            scope.round_seconds = scope.last_done - started
            scope.interval = self._interval(scope, changed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = "error"
            scope.failed_at = self._clock()
            scope.failures += 1
            backoff = self.settings.min_interval * 2 ** min(scope.failures, 10)
            scope.interval = min(self.settings.max_interval, backoff)
            level = logging.WARNING if isinstance(exc, errors.ApiError) else logging.ERROR
            log.log(
                level,
                "watcher round failed",
                exc_info=not isinstance(exc, errors.ApiError),
                extra={"system": self.system, "scope": scope.user, "reason": str(exc)},
            )
        finally:
            self._release_waiters(waiting)
            self._expire(scope, self._clock())
            if self._metrics is not None:
                self._metrics.watcher_rounds.labels(self.system, outcome).inc()
                self._metrics.watcher_round_seconds.labels(self.system).observe(
                    self._clock() - started
                )

    def _interval(self, scope: _Scope, changed: bool) -> float:
        now = self._clock()
        if changed or scope.urgent or scope.waiting:
            return self.settings.min_interval
        watched = [scope.views.get(i) for i in scope.explicit_ids(now)]
        followed = scope.follows_all()
        if followed:
            watched += [v for v in scope.views.values() if v.owner in followed]
        if any(v is None or not v.final for v in watched):
            return self.settings.min_interval
        return self.settings.max_interval

    def _window(self, scope: _Scope, poll_ids: list[str]) -> list[str]:
        """At most ``max_batch`` ids: the never-seen first (a caller waits for them),
        then a window over the rest that rotates from round to round."""
        limit = self.settings.max_batch
        if len(poll_ids) <= limit:
            return poll_ids
        new = [i for i in poll_ids if i not in scope.views]
        seen = [i for i in poll_ids if i in scope.views]
        room = max(0, limit - len(new))
        chosen = new[:limit]
        if room and seen:
            start = scope.cursor % len(seen)
            chosen += (seen[start:] + seen[:start])[:room]
            scope.cursor = start + room
        return sorted(chosen, key=_id_key)

    async def _poll(self, scope: _Scope, now: float) -> bool:
        """One round as the scope's identity: squeue, then sacct for ended, vanished or
        never-seen jobs; True if anything changed."""
        runner = self._runner_for(scope.user)
        poll_ids = self._window(scope, scope.poll_ids(now))
        followed = scope.follows_all()
        limit = self.settings.max_batch
        if followed:
            users = sorted(scope.interested_users(now))
            listed = await self.scheduler.active_jobs(runner, users=users)
        elif poll_ids:
            listed = await self.scheduler.active_jobs(runner, job_ids=poll_ids)
        else:
            return False
        observed = self._clock()
        records: dict[str, Job] = {}
        raw_ids: dict[str, str] = {}
        for item in listed:
            records[item.job.job_id] = item.job
            raw_ids.setdefault(item.raw_id, item.job.job_id)
        view_ids = set(poll_ids)
        if followed:
            view_ids.update(
                top_id(job_id) for job_id, job in records.items() if job.user in followed
            )
        entries = {view_id: _entries(view_id, records, raw_ids) for view_id in view_ids}
        accounting = [
            view_id
            for view_id in sorted(view_ids, key=_id_key)
            if self._wants_accounting(scope, view_id, entries[view_id])
        ][:limit]
        accounted: list[Job] = []
        if accounting:
            accounted = await self.scheduler.accounted_jobs(runner, accounting)
        accounted_ids = set(accounting)
        changed = False
        for view_id in view_ids:
            found = entries[view_id]
            mine = _accounted_for(view_id, found, accounted) if view_id in accounted_ids else []
            merged = _select(view_id, merge_jobs(found, mine)) if mine else found
            before = scope.views.get(view_id)
            if not merged:
                if view_id not in accounted_ids:
                    continue  # not asked this round
                if before is None:
                    # neither the controller nor accounting knows it: stop watching it
                    scope.missing[view_id] = now
                    for by_id in scope.leases.values():
                        by_id.pop(view_id, None)
                else:
                    before.observed = max(before.observed, observed)  # nothing newer known
                continue
            job = _as_view(view_id, merged)
            old_seq = before.seq if before is not None else None
            settled = bool(mine) and _settled(found, mine)
            view = self._update(scope, view_id, job, observed, settled=settled)
            changed = changed or view.seq != old_seq
        return changed

    @staticmethod
    def _wants_accounting(scope: _Scope, view_id: str, found: Sequence[Job]) -> bool:
        view = scope.views.get(view_id)
        if view is not None and view.final:
            return False
        if found:
            return any(is_terminal(job) for job in found)
        # vanished from the controller, or never seen by a round: ask accounting
        return True

    def _expire(self, scope: _Scope, now: float) -> None:
        """Drop lapsed leases and old misses; drop views nobody is interested in: at
        once unless their owner was (then after ``retention_seconds``, at most
        ``max_leases_per_user`` per owner, the oldest going first)."""
        holders: dict[str, set[str]] = {}
        for user, by_id in list(scope.leases.items()):
            for job_id, until in list(by_id.items()):
                if until <= now:
                    del by_id[job_id]
                else:
                    holders.setdefault(job_id, set()).add(user)
            if not by_id:
                del scope.leases[user]
        for (user, job_id), count in scope.watches.items():
            if count > 0:
                holders.setdefault(job_id, set()).add(user)
        for job_id, since in list(scope.missing.items()):
            if now - since > self.settings.interest_seconds:
                del scope.missing[job_id]
        followed = scope.follows_all()
        keep = self.settings.retention_seconds
        retained: dict[str | None, list[JobView]] = {}
        for view_id, view in list(scope.views.items()):
            interested = holders.get(view_id, set())
            owner = view.owner
            if owner is not None and (owner in interested or owner in followed):
                view.retain = True
            if interested or view_id in scope.wanted or view_id in scope.subs_by_view:
                continue
            if owner in followed:
                continue
            if not view.retain or now - view.observed > keep:
                del scope.views[view_id]
            else:
                retained.setdefault(owner, []).append(view)
        cap = self.settings.max_leases_per_user
        for views in retained.values():
            if len(views) > cap:
                views.sort(key=lambda v: v.observed)
                for view in views[: len(views) - cap]:
                    del scope.views[view.view_id]


# ---------------------------------------------------------------- selection helpers


def _entries(view_id: str, records: dict[str, Job], raw_ids: dict[str, str]) -> list[Job]:
    """The controller's records that ``view_id`` names: the job, an array's tasks, or
    the array task whose own numeric id it is."""
    exact = records.get(view_id)
    if exact is not None:
        return [exact]
    if "_" not in view_id:
        prefix = f"{view_id}_"
        tasks = [job for job_id, job in records.items() if job_id.startswith(prefix)]
        if tasks:
            return sorted(tasks, key=job_sort_key)
    canonical = raw_ids.get(view_id)
    return [records[canonical]] if canonical is not None else []


def _select(view_id: str, jobs: Iterable[Job]) -> list[Job]:
    jobs = list(jobs)
    exact = [job for job in jobs if job.job_id == view_id]
    if exact:
        return exact
    prefix = f"{view_id}_"
    return sorted((job for job in jobs if job.job_id.startswith(prefix)), key=job_sort_key)


def _accounted_for(view_id: str, found: Sequence[Job], accounted: Sequence[Job]) -> list[Job]:
    """Accounting records of ``view_id`` (or of the records squeue showed for it)."""
    names = {job.job_id for job in found}
    mine = [
        job
        for job in accounted
        if job.job_id in names
        or job.job_id == view_id
        or ("_" not in view_id and job.job_id.startswith(f"{view_id}_"))
    ]
    return drop_stale(found, mine)


def _settled(found: Sequence[Job], accounted: Sequence[Job]) -> bool:
    """Accounting holds every record the controller showed, all in final states."""
    if found and {job.job_id for job in found} - {job.job_id for job in accounted}:
        return False
    return bool(accounted) and all(_is_final(job) for job in accounted)


def _as_view(view_id: str, merged: Sequence[Job]) -> Job:
    """The ``Job`` that ``GET .../jobs/{view_id}`` answers: an array's summary, or the job."""
    prefix = f"{view_id}_"
    if "_" not in view_id and all(job.job_id.startswith(prefix) for job in merged):
        return summarize_array(view_id, merged)
    return merged[0]
