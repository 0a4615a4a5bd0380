"""The shared job watcher: one polling loop per system, whatever the number of clients.

Clients (event streams, long-polls, repeated GETs) register interest in jobs; per
round the watcher runs, per *scope*, ONE ``squeue -t all`` for the watched jobs and,
when some of them ended (or left the controller), ONE ``sacct -j`` for those, then
publishes each job's state changes to its subscribers. A scope is the identity the
commands run as: the system's service identity (``service_user``, one scope for all
users), or each interested user in per-user mode.

* Selection: ``squeue -u <users>`` when someone follows all of a user's jobs, else
  ``squeue -j <ids>`` for the watched ids (ids whose job ended and settled are no
  longer polled: they cannot change).
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
* Ownership: views carry the job's owner; every consumer API takes the caller's user
  name and answers only the caller's own jobs (``NotFound`` otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from hpcgate import errors
from hpcgate.config import SystemSettings, WatcherSettings
from hpcgate.metrics import Metrics, command_source
from hpcgate.remote import CommandRunner
from hpcgate.scheduler.base import Scheduler, validate_job_id
from hpcgate.scheduler.models import Job
from hpcgate.scheduler.slurm import FINAL_STATES
from hpcgate.scheduler.slurm_parsing import (
    TERMINAL_STATES,
    drop_stale,
    job_sort_key,
    merge_jobs,
    summarize_array,
)

log = logging.getLogger(__name__)

RunnerFactory = Callable[[str], CommandRunner]


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

    __slots__ = ("final", "history", "job", "observed", "sig", "terminal_at", "view_id")

    def __init__(self, view_id: str, job: Job, event: JobEvent, observed: float, history: int):
        self.view_id = view_id
        self.job = job
        self.observed = observed
        self.sig = signature(job)
        self.history: deque[JobEvent] = deque([event], maxlen=history)
        self.terminal_at: float | None = observed if is_terminal(job) else None
        self.final = False

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
    """A consumer's queue of events: one job id, several, or all of a user's jobs."""

    def __init__(self, user: str, view_ids: frozenset[str] | None, kind: str) -> None:
        self.user = user
        self.view_ids = view_ids
        self.kind = kind
        self.queue: asyncio.Queue[tuple[str, JobEvent]] = asyncio.Queue()

    def deliver(self, view_id: str, event: JobEvent) -> None:
        self.queue.put_nowait((view_id, event))


@dataclass
class _Scope:
    """One polling identity and everything watched through it."""

    user: str
    views: dict[str, JobView] = field(default_factory=dict)
    leases: dict[tuple[str, str], float] = field(default_factory=dict)
    watches: Counter[tuple[str, str]] = field(default_factory=Counter)
    all_jobs: Counter[str] = field(default_factory=Counter)
    subs_by_view: dict[str, set[Subscription]] = field(default_factory=dict)
    subs_all: dict[str, set[Subscription]] = field(default_factory=dict)
    interval: float = 0.0
    last_start: float = -math.inf
    last_done: float | None = None
    round_seconds: float = 0.0
    cursor: int = 0
    failures: int = 0
    urgent: bool = False
    waiting: list[asyncio.Future[None]] = field(default_factory=list)
    running: asyncio.Task[None] | None = None

    def explicit_ids(self, now: float) -> set[str]:
        ids = {job_id for (_, job_id), until in self.leases.items() if until > now}
        ids.update(job_id for (_, job_id), count in self.watches.items() if count > 0)
        return ids

    def interested_users(self, now: float) -> set[str]:
        users = {user for (user, _), until in self.leases.items() if until > now}
        users.update(user for (user, _), count in self.watches.items() if count > 0)
        users.update(user for user, count in self.all_jobs.items() if count > 0)
        return users

    def poll_ids(self, now: float) -> list[str]:
        ids = [i for i in self.explicit_ids(now) if not (v := self.views.get(i)) or not v.final]
        return sorted(ids, key=_id_key)

    def follows_all(self) -> set[str]:
        return {user for user, count in self.all_jobs.items() if count > 0}


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
        self.scheduler = scheduler
        self._runner_for = runner_for
        self._metrics = metrics
        self._clock = clock
        self._scopes: dict[str, _Scope] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lookups: dict[tuple[str, str], asyncio.Task[Job]] = {}
        self._subscribers: Counter[str] = Counter()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"watcher-{self.system}")

    async def close(self) -> None:
        tasks = [t for t in [self._task, *(s.running for s in self._scopes.values())] if t]
        tasks.extend(self._lookups.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        for scope in self._scopes.values():
            self._release_waiters(scope.waiting)
            scope.waiting = []

    # ------------------------------------------------------------ consumers

    def cached(self, user: str, job_id: str) -> JobView | None:
        """The caller's job if a fresh view of it exists (no I/O); keeps it watched."""
        scope = self._scope(user)
        view = scope.views.get(job_id)
        if view is None or view.owner != user or not self._fresh(scope, view):
            return None
        self._lease(scope, user, job_id)
        return view

    async def view(self, user: str, job_id: str) -> JobView:
        """A fresh view of the caller's job: from the cache, the next round, or (for a
        job the round did not show) one scheduler lookup shared by concurrent callers.

        ``NotFound`` for unknown jobs and for other users' jobs.
        """
        job_id = validate_job_id(job_id)
        scope = self._scope(user)
        view = scope.views.get(job_id)
        if view is not None and self._fresh(scope, view):
            return self._owned(view, user, job_id, scope)
        asked = self._clock()
        self._lease(scope, user, job_id)
        with contextlib.suppress(TimeoutError):
            await self.next_round(scope)
        view = scope.views.get(job_id)
        if view is not None and view.observed >= asked:
            return self._owned(view, user, job_id, scope)
        job = await self._lookup(user, job_id)
        view = self.observe(user, job_id, job, observed=asked)
        return self._owned(view, user, job_id, scope)

    def observe(
        self, user: str, job_id: str, job: Job, *, observed: float | None = None
    ) -> JobView:
        """Feed a lookup's answer (taken at ``observed``) to the watcher; watch the job."""
        scope = self._scope(user)
        when = self._clock() if observed is None else observed
        view = scope.views.get(job_id)
        if view is None or view.observed < when:
            # a lookup of an ended job includes its accounting
            view = self._update(scope, job_id, job, when, settled=job.tasks is not None)
        if job.user == user:
            self._lease(scope, user, job_id)
        return view

    def check_capacity(self) -> None:
        """``ServiceUnavailable`` when ``max_subscribers`` streams and long-polls wait."""
        if sum(self._subscribers.values()) >= self.settings.max_subscribers:
            raise errors.ServiceUnavailable("Too many event subscribers; retry later")

    def subscribe(self, user: str, job_ids: Iterable[str] | None, kind: str) -> Subscription:
        """Receive the events of ``job_ids`` (None: all of ``user``'s jobs) until
        ``unsubscribe``; the jobs stay watched meanwhile."""
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
        """The caller's jobs the watcher knows, after a round that listed all of them
        (call ``subscribe(user, None, ...)`` first)."""
        scope = self._scope(user)
        with contextlib.suppress(TimeoutError):
            await self.next_round(scope)
        views = [
            view
            for view_id, view in scope.views.items()
            if view.owner == user and view_id == top_id(view_id)
        ]
        return sorted(views, key=lambda v: v.seq)

    async def next_round(self, scope: _Scope) -> None:
        """Wait for the end of the next round of ``scope`` that starts after this call."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        scope.waiting.append(future)
        scope.urgent = True
        self._wake.set()
        limit = self.settings.min_interval + self.scheduler_timeout * 2 + 1
        async with asyncio.timeout(limit):
            await future

    def current(self, user: str, job_id: str) -> JobView | None:
        """The view of ``job_id`` in the caller's scope as it is now (no freshness check)."""
        return self._scope(user).views.get(job_id)

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

    def _fresh(self, scope: _Scope, view: JobView) -> bool:
        """Final, or observed within the fast interval (plus one round's duration): a
        job that can still change is watched at ``min_interval``."""
        if view.final:
            return True
        limit = self.settings.min_interval + min(scope.round_seconds, self.settings.min_interval)
        return self._clock() - view.observed <= limit

    @staticmethod
    def _owned(view: JobView, user: str, job_id: str, scope: _Scope) -> JobView:
        if view.owner != user:
            if not scope.watches.get((user, job_id)):
                scope.leases.pop((user, job_id), None)
            raise errors.NotFound(f"Job not found: {job_id}")
        return view

    def _lease(self, scope: _Scope, user: str, job_id: str) -> None:
        key = (user, job_id)
        is_new = key not in scope.leases and not scope.watches.get(key)
        scope.leases[key] = self._clock() + self.settings.interest_seconds
        if is_new:
            self._wake.set()

    async def _lookup(self, user: str, job_id: str) -> Job:
        """``scheduler.job`` as the caller; concurrent lookups of one job share one."""
        key = (user, job_id)
        task = self._lookups.get(key)
        if task is None:
            runner = self._runner_for(user)
            task = asyncio.create_task(self.scheduler.job(runner, job_id))
            self._lookups[key] = task
            task.add_done_callback(lambda _: self._lookups.pop(key, None))
        return await asyncio.shield(task)

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
            if sub.user == owner:
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
            for scope in list(self._scopes.values()):
                if scope.running is not None:
                    continue
                due = self._due(scope, now)
                if due is None:
                    if scope.waiting:
                        self._release_waiters(scope.waiting)
                        scope.waiting = []
                    self._expire(scope, now)
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

    async def _poll(self, scope: _Scope, now: float) -> bool:
        """One round: squeue, then sacct for ended or vanished jobs; True if anything changed."""
        runner = self._runner_for(scope.user)
        poll_ids = scope.poll_ids(now)
        followed = scope.follows_all()
        limit = self.settings.max_batch
        if len(poll_ids) > limit:  # more than one command takes: a window that rotates
            start = scope.cursor % len(poll_ids)
            poll_ids = (poll_ids[start:] + poll_ids[:start])[:limit]
            scope.cursor = start + limit
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
            view_ids.update(top_id(job_id) for job_id in records)
        entries = {view_id: _entries(view_id, records, raw_ids) for view_id in view_ids}
        accounting = [
            view_id
            for view_id in sorted(view_ids)
            if self._wants_accounting(scope, view_id, entries[view_id], observed)
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
            if not merged:
                continue
            job = _as_view(view_id, merged)
            before = scope.views.get(view_id)
            old_seq = before.seq if before is not None else None
            settled = bool(mine) and _settled(found, mine)
            view = self._update(scope, view_id, job, observed, settled=settled)
            changed = changed or view.seq != old_seq
        return changed

    def _wants_accounting(
        self, scope: _Scope, view_id: str, found: Sequence[Job], now: float
    ) -> bool:
        view = scope.views.get(view_id)
        if view is not None and view.final:
            return False
        if found:
            return any(is_terminal(job) for job in found)
        # vanished from the controller (or never seen by a round): ask accounting
        return view is not None

    def _expire(self, scope: _Scope, now: float) -> None:
        for key, until in list(scope.leases.items()):
            if until <= now:
                del scope.leases[key]
        keep = self.settings.retention_seconds
        watched = scope.explicit_ids(now)
        for view_id, view in list(scope.views.items()):
            if view_id in watched or view_id in scope.subs_by_view:
                continue
            if view.owner in scope.all_jobs:
                continue
            if now - view.observed > keep:
                del scope.views[view_id]


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
