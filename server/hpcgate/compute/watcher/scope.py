"""A scope: one polling identity and everything watched through it.

The identity is the system's service user (one scope for everybody) or, per user,
the user. A scope holds its views of jobs, who is interested in which (leases from
GETs, watches from streams, all-jobs follows, callers waiting for a round) and the
pace of its rounds; it decides which ids a round asks for and what it forgets.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from hpcgate.compute.jobs import id_sort_key
from hpcgate.compute.watcher.lease import Interest
from hpcgate.compute.watcher.views import JobView, Subscription
from hpcgate.config import WatcherSettings


@dataclass
class Scope:
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
    # ids a round looked up (controller and accounting) and found nowhere -> its start
    missing: dict[str, float] = field(default_factory=dict)
    # ids the controller does not show whose accounting command failed -> when
    unresolved: dict[str, float] = field(default_factory=dict)
    accounting_failures: int = 0  # consecutive rounds whose accounting command failed
    accounting_retry_at: float = -math.inf
    # what other replicas watch through this scope (read by the replica that leads)
    remote_ids: set[str] = field(default_factory=set)
    remote_follows: set[str] = field(default_factory=set)
    remote_users: set[str] = field(default_factory=set)
    remote_fast: bool = False
    # a waiting future -> the generation of this replica's interest its round must include
    gen_of: dict[asyncio.Future[None], int] = field(default_factory=dict)
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

    # ------------------------------------------------------------ interest

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
        return sorted(ids, key=id_sort_key)

    def follows_all(self) -> set[str]:
        return {user for user, count in self.all_jobs.items() if count > 0}

    def has_interest(self, now: float) -> bool:
        local = self.follows_all() or self.poll_ids(now) or self.waiting
        return bool(local or self.remote_ids or self.remote_follows)

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
            or self.remote_ids
            or self.remote_follows
        )

    def lease(self, user: str, job_id: str, until: float, max_leases: int) -> bool:
        """Keep ``job_id`` watched for ``user`` until ``until``; a user holds at most
        ``max_leases`` leases (the least recently renewed go first). True if the job
        was not watched for ``user`` before."""
        by_id = self.leases.setdefault(user, OrderedDict())
        is_new = job_id not in by_id and not self.watches.get((user, job_id))
        by_id[job_id] = until
        by_id.move_to_end(job_id)
        while len(by_id) > max_leases:
            by_id.popitem(last=False)
        return is_new

    def unlease(self, user: str, job_id: str) -> None:
        by_id = self.leases.get(user)
        if by_id is not None:
            by_id.pop(job_id, None)
            if not by_id:
                del self.leases[user]

    # ------------------------------------------------------------ replicas

    def interest(self, now: float, settings: WatcherSettings) -> Interest | None:
        """What this scope watches, for the replica that leads (None: nothing)."""
        follows = self.follows_all()
        ids = self.poll_ids(now)
        if not (ids or follows or self.waiting):
            return None
        return Interest(
            ids=frozenset(ids),
            follows=frozenset(follows),
            users=frozenset(self.interested_users(now)) if follows else frozenset(),
            fast=self.next_interval(now, False, settings) == settings.min_interval,
        )

    def set_remote(self, interest: Interest) -> None:
        """What the other replicas watch through this scope (this replica leads)."""
        self.remote_ids = set(interest.ids)
        self.remote_follows = set(interest.follows)
        self.remote_users = set(interest.users)
        self.remote_fast = interest.fast

    def included(self, gen: int) -> list[asyncio.Future[None]]:
        """Take the waiters whose interest (up to generation ``gen``) a round included."""
        done = [f for f in self.waiting if self.gen_of.get(f, 0) <= gen]
        self.waiting = [f for f in self.waiting if self.gen_of.get(f, 0) > gen]
        for future in done:
            self.gen_of.pop(future, None)
        return done

    # ------------------------------------------------------------ rounds

    def window(self, poll_ids: list[str], limit: int) -> list[str]:
        """At most ``limit`` ids: the never-seen first (a caller waits for them),
        then a window over the rest that rotates from round to round."""
        if len(poll_ids) <= limit:
            return poll_ids
        new = [i for i in poll_ids if i not in self.views]
        seen = [i for i in poll_ids if i in self.views]
        room = max(0, limit - len(new))
        chosen = new[:limit]
        if room and seen:
            start = self.cursor % len(seen)
            chosen += (seen[start:] + seen[:start])[:room]
            self.cursor = start + room
        return sorted(chosen, key=id_sort_key)

    def next_interval(self, now: float, changed: bool, settings: WatcherSettings) -> float:
        """``min_interval`` while anything watched can still change, else ``max_interval``."""
        if changed or self.urgent or self.waiting or self.remote_fast or self.remote_ids:
            return settings.min_interval
        watched = [self.views.get(i) for i in self.explicit_ids(now)]
        followed = self.follows_all()
        if followed:
            watched += [v for v in self.views.values() if v.owner in followed]
        if any(v is None or not v.final for v in watched):
            return settings.min_interval
        return settings.max_interval

    def expire(self, now: float, settings: WatcherSettings) -> None:
        """Drop lapsed leases and old misses; drop views nobody is interested in: at
        once unless their owner was (then after ``retention_seconds``, at most
        ``max_leases_per_user`` per owner, the oldest going first)."""
        holders: dict[str, set[str]] = {}
        for user, by_id in list(self.leases.items()):
            for job_id, until in list(by_id.items()):
                if until <= now:
                    del by_id[job_id]
                else:
                    holders.setdefault(job_id, set()).add(user)
            if not by_id:
                del self.leases[user]
        for (user, job_id), count in self.watches.items():
            if count > 0:
                holders.setdefault(job_id, set()).add(user)
        for misses in (self.missing, self.unresolved):
            for job_id, since in list(misses.items()):
                if now - since > settings.interest_seconds:
                    del misses[job_id]
        followed = self.follows_all()
        keep = settings.retention_seconds
        retained: dict[str | None, list[JobView]] = {}
        for view_id, view in list(self.views.items()):
            interested = holders.get(view_id, set())
            owner = view.owner
            if owner is not None and (owner in interested or owner in followed):
                view.retain = True
            if interested or view_id in self.wanted or view_id in self.subs_by_view:
                continue
            if owner in followed:
                continue
            if not view.retain or now - view.observed > keep:
                del self.views[view_id]
            else:
                retained.setdefault(owner, []).append(view)
        cap = settings.max_leases_per_user
        for views in retained.values():
            if len(views) > cap:
                views.sort(key=lambda v: v.observed)
                for view in views[: len(views) - cap]:
                    del self.views[view.view_id]
