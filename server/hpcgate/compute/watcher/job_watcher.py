"""The job watcher of one system: the consumers' API and the polling loop.

See ``hpcgate.compute.watcher`` for the design (scopes, trust, selection, intervals,
views, events, visibility, bounds). It talks to the workload manager only through
the ``Scheduler`` interface and judges jobs by ``hpcgate.compute.jobs``. Rounds run
only while this replica holds the round lease (``lease``; always, alone); otherwise
it applies the leading replica's rounds to its views (``apply_remote``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable

from hpcgate import errors
from hpcgate.cluster.remote import CommandRunner
from hpcgate.compute.jobs import top_id, validate_job_id
from hpcgate.compute.scheduler.base import Scheduler
from hpcgate.compute.scheduler.models import Job
from hpcgate.compute.scheduler.visibility import JobVisibility, ensure_visible
from hpcgate.compute.watcher.budget import Slot, SubscriberBudget
from hpcgate.compute.watcher.lease import (
    Interest,
    RemoteInterest,
    RoundCoordinator,
    SoloCoordinator,
)
from hpcgate.compute.watcher.reclaim import Reclaimer
from hpcgate.compute.watcher.results import RoundResult
from hpcgate.compute.watcher.rounds import ACCOUNTING_DOWN, count_accounting, poll, select
from hpcgate.compute.watcher.scope import Scope
from hpcgate.compute.watcher.view_writer import ViewWriter
from hpcgate.compute.watcher.views import JobView, Subscription
from hpcgate.config import SystemSettings, WatcherSettings
from hpcgate.operations.metrics import Metrics, command_source

log = logging.getLogger(__name__)

RunnerFactory = Callable[[str], CommandRunner]


class JobWatcher(ViewWriter):
    """The watcher of one system. ``start()`` once the loop runs; ``close()`` at exit."""

    def __init__(
        self,
        system: SystemSettings,
        scheduler: Scheduler,
        runner_for: RunnerFactory,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        coordinator: RoundCoordinator | None = None,
    ) -> None:
        self.system = system.name
        self.settings: WatcherSettings = system.watcher
        self.service_user = system.service_user
        self.visibility: JobVisibility = system.scheduler.job_visibility
        self.scheduler = scheduler
        self._runner_for = runner_for
        self._metrics = metrics
        self._clock = clock
        self._scopes: dict[str, Scope] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscribers: Counter[str] = Counter()
        # memory back to the system after many streams and long-polls closed
        self.reclaimer = Reclaimer()
        self.budget = SubscriberBudget(self.system, self.settings)
        self.coordinator: RoundCoordinator = coordinator or SoloCoordinator()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self.coordinator.start(self)
            self._task = asyncio.create_task(self._loop(), name=f"watcher-{self.system}")

    async def close(self) -> None:
        tasks = [t for t in [self._task, *(s.running for s in self._scopes.values())] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._task is not None:
            await self.coordinator.close()
        self._task = None
        self.reclaimer.close()
        for scope in self._scopes.values():
            self._release_waiters(scope.waiting)
            scope.waiting = []

    # ------------------------------------------------------------ budgets

    def check_capacity(self, user: str | None = None) -> None:
        """``ServiceUnavailable`` when ``max_subscribers`` streams and long-polls are
        open; ``TooManyRequests`` when ``user`` holds ``max_subscribers_per_user``."""
        self.budget.check(user)

    def acquire(self, user: str, kind: str) -> Slot:
        """A place for one stream or long-poll of ``user`` (checked and taken at once,
        so concurrent requests cannot overshoot); ``release()`` it when it ends."""
        return self.budget.acquire(user, kind)

    def held(self, user: str) -> int:
        """Streams and long-polls ``user`` holds open now."""
        return self.budget.held(user)

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
                    scope.unlease(user, job_id)
                    raise errors.NotFound(f"Job not found: {job_id}")
                if scope.unresolved.get(job_id, -math.inf) >= asked:
                    raise errors.ServiceUnavailable(
                        f"Job {job_id} is not held by the Slurm controller and "
                        f"{ACCOUNTING_DOWN}; retry later"
                    )
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
        self.reclaimer.changed(self._subscribers.total())
        self._interested(urgent=scope.urgent)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        scope = self._scope(sub.user)
        self._subscribers[sub.kind] -= 1
        self.reclaimer.changed(self._subscribers.total())
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

    async def next_round(self, scope: Scope, *, timeout: float | None = None) -> None:
        """Wait for the end of the next round of ``scope`` that starts after this call."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        scope.waiting.append(future)
        scope.urgent = True
        gen = self._interested(urgent=True)
        if gen is not None:
            scope.gen_of[future] = gen
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
            self._interested(urgent=True)

    @property
    def scheduler_timeout(self) -> float:
        settings = getattr(self.scheduler, "settings", None)
        return float(getattr(settings, "timeout", 30.0))

    def stats(self) -> dict[str, float]:
        """Figures for the metrics: interval, lag, views, watched ids, subscribers."""
        now = self._clock()
        active = [s for s in self._scopes.values() if s.has_interest(now)]
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

    def _scope(self, user: str) -> Scope:
        return self._scope_named(self.service_user or user)

    def _scope_named(self, name: str) -> Scope:
        scope = self._scopes.get(name)
        if scope is None:
            scope = self._scopes[name] = Scope(user=name, interval=self.settings.min_interval)
        return scope

    def _round_wait(self) -> float:
        """How long a caller waits for rounds at most."""
        return self.settings.min_interval + self.scheduler_timeout * 2 + 1

    def _fresh(self, scope: Scope, view: JobView) -> bool:
        """Final, or observed within the fast interval (plus one round's duration): a
        job that can still change is watched at ``min_interval``."""
        if view.final:
            return True
        limit = self.settings.min_interval + min(scope.round_seconds, self.settings.min_interval)
        return self._clock() - view.observed <= limit

    def _visible(self, scope: Scope, view: JobView, user: str, job_id: str) -> JobView:
        """``view`` if the caller may see it; else ``NotFound`` (and no interest kept)."""
        try:
            ensure_visible(user, view.owner, self.visibility, job_id)
        except errors.NotFound:
            if not scope.watches.get((user, job_id)):
                scope.unlease(user, job_id)
            raise
        return view

    def _lease(self, scope: Scope, user: str, job_id: str) -> None:
        """Keep ``job_id`` watched for ``user`` for ``interest_seconds`` (at most
        ``max_leases_per_user`` leases per user)."""
        until = self._clock() + self.settings.interest_seconds
        if scope.lease(user, job_id, until, self.settings.max_leases_per_user):
            self._interested(urgent=False)

    def _due(self, scope: Scope, now: float) -> float | None:
        """When the scope's next round should start, or None without interest."""
        if not scope.has_interest(now):
            return None
        due = scope.last_start + scope.interval
        if scope.urgent:
            due = min(due, scope.last_start + self.settings.min_interval)
        return due

    async def _loop(self) -> None:
        while True:
            now = self._clock()
            sleep = self.settings.max_interval
            leads = self.coordinator.leads()
            for name, scope in list(self._scopes.items()):
                if scope.running is not None:
                    continue
                due = self._due(scope, now)
                if due is None:
                    if scope.waiting:
                        self._release_waiters(scope.waiting)
                        scope.waiting = []
                        scope.gen_of.clear()
                    scope.expire(now, self.settings)
                    if name != self.service_user and scope.idle():
                        del self._scopes[name]
                    continue
                if not leads:
                    continue  # the leading replica's rounds come through apply_remote
                if due <= now:
                    scope.running = asyncio.create_task(self._round(scope))
                    scope.running.add_done_callback(functools.partial(self._round_done, scope))
                else:
                    sleep = min(sleep, due - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(sleep, 0.01)):
                    await self._wake.wait()

    def _round_done(self, scope: Scope, _: asyncio.Task[None]) -> None:
        scope.running = None
        self._wake.set()

    @staticmethod
    def _release_waiters(waiting: list[asyncio.Future[None]]) -> None:
        for future in waiting:
            if not future.done():
                future.set_result(None)

    def _interested(self, *, urgent: bool) -> int | None:
        """Interest changed: wake the loop; while following, tell the leader. The
        generation of the interest publication that will carry it (following), or None."""
        self._wake.set()
        if self.coordinator.leads():
            return None
        return self.coordinator.interest_changed(urgent=urgent)

    async def _round(self, scope: Scope) -> None:
        started = self._clock()
        scope.last_start = started
        scope.urgent = False
        waiting, scope.waiting = scope.waiting, []
        for future in waiting:
            scope.gen_of.pop(future, None)
        command_source.set("watcher")
        outcome = "ok"
        result = RoundResult(scope.user)
        asked = False
        try:
            remote = await self.coordinator.remote_interest()
            self.set_remote(remote, set())
            selection = select(scope, started, self.settings)
            result, asked = await poll(
                self.scheduler,
                self._runner_for(scope.user),
                scope,
                selection,
                self.settings.max_batch,
            )
            result.gens = remote.gens
            result.seconds = self._clock() - started
            count_accounting(scope, result, self._clock(), self.settings, self.system)
            outcome = "partial" if result.unaccounted else "ok"
            changed = self._apply(scope, result, observed=self._clock(), started=started)
            scope.failures = 0
            scope.last_done = self._clock()
            scope.round_seconds = scope.last_done - started
            scope.interval = scope.next_interval(self._clock(), changed, self.settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = "error"
            asked = True
            result = RoundResult(scope.user, error="the watcher round failed")
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
            scope.expire(self._clock(), self.settings)
            if self._metrics is not None:
                self._metrics.watcher_rounds.labels(self.system, outcome).inc()
                self._metrics.watcher_round_seconds.labels(self.system).observe(
                    self._clock() - started
                )
        if asked:
            await self.coordinator.share(result)

    # ------------------------------------------------------------ replicas (``lease``)

    def local_interest(self) -> dict[str, Interest]:
        """What this replica's clients watch, per scope (published while following)."""
        now = self._clock()
        found = {name: scope.interest(now, self.settings) for name, scope in self._scopes.items()}
        return {name: interest for name, interest in found.items() if interest is not None}

    def set_remote(self, remote: RemoteInterest, urgent: set[str]) -> None:
        """The other replicas' interest, polled by this replica's rounds (leading)."""
        for name in remote.scopes:
            self._scope_named(name)
        for name, scope in self._scopes.items():
            scope.set_remote(remote.scopes.get(name, Interest()))
            if name in remote.scopes and ("*" in urgent or name in urgent):
                scope.urgent = True
        self._wake.set()

    def apply_remote(self, result: RoundResult) -> None:
        """The leading replica's round (following): views, events, waiters, pace."""
        scope = self._scopes.get(result.scope)
        if scope is None:
            return
        now = self._clock()
        if result.error is not None:
            scope.failed_at = now
            scope.failures += 1
        else:
            changed = self._apply(scope, result, observed=now, started=now)
            scope.failures = 0
            scope.last_start = now - result.seconds
            scope.last_done = now
            scope.round_seconds = result.seconds
            scope.interval = scope.next_interval(now, changed, self.settings)
        self._release_waiters(scope.included(result.gens.get(self.coordinator.replica, 0)))
        scope.expire(now, self.settings)

    def leadership_changed(self) -> None:
        """Leading again: rounds start; following: another replica polls."""
        if not self.coordinator.leads():
            for scope in self._scopes.values():
                scope.set_remote(Interest())
            self.coordinator.interest_changed(urgent=bool(self._scopes))
        self._wake.set()
