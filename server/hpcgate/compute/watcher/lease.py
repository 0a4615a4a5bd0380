"""One watcher round per interval across replicas: who polls, and how the others learn.

A server process alone always holds the lease (``SoloCoordinator``) and runs its own
rounds. With the Redis store (``idempotency.backend: redis``) replicas share one lease
per system (``lease_redis.RedisCoordinator``); without it, the worker processes of one
``hpcgate serve --workers N`` share one through a SQLite file in the state directory
(``lease_sqlite.SqliteCoordinator``, which polls where Redis pushes). The replica that
holds it runs the rounds for what every replica watches, the others run no scheduler
command at all:

* each follower writes what its clients watch (``Interest``: ids, followed users,
  whether anything can still change) into the store, with a short expiry;
* the leader reads every follower's interest at the start of each round and polls
  the union, then sends the round's result (``results.RoundResult``) to all
  replicas, which apply it to their own views and deliver the events to their own
  streams and long-polls;
* a follower's waiter (a stream's first lookup, a long-poll) waits for a round that
  included the interest it published (interest generations), and asks the leader
  for an early round;
* the lease lasts ``2 * min_interval`` (at least 2 s) and is renewed four times per
  lease; a leader that dies is replaced once it lapses, one that stops gives it
  back at once. While the store is unreachable every replica polls for itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hpcgate.compute.watcher.results import RoundResult
from hpcgate.config import Settings, SystemSettings


@dataclass(frozen=True)
class Interest:
    """What one replica watches through one scope."""

    ids: frozenset[str] = frozenset()
    """Watched ids that can still change."""
    follows: frozenset[str] = frozenset()
    """Users all of whose jobs are followed."""
    users: frozenset[str] = frozenset()
    """While someone follows: every user with interest (listed with ``squeue -u``)."""
    fast: bool = False
    """Something watched can still change: rounds at ``min_interval``."""


WORKERS_ENV = "HPCGATE_WORKERS"
"""The number of worker processes of this ``hpcgate serve`` (set by it for its workers)."""


def interest_json(interest: Interest) -> dict[str, Any]:
    return {
        "ids": sorted(interest.ids),
        "follows": sorted(interest.follows),
        "users": sorted(interest.users),
        "fast": interest.fast,
    }


def interest_from_json(raw: Any) -> Interest:
    return Interest(
        ids=frozenset(str(i) for i in raw.get("ids", ())),
        follows=frozenset(str(u) for u in raw.get("follows", ())),
        users=frozenset(str(u) for u in raw.get("users", ())),
        fast=bool(raw.get("fast")),
    )


def merge_interests(interests: list[Interest]) -> Interest:
    return Interest(
        ids=frozenset().union(*(i.ids for i in interests)),
        follows=frozenset().union(*(i.follows for i in interests)),
        users=frozenset().union(*(i.users for i in interests)),
        fast=any(i.fast for i in interests),
    )


@dataclass
class RemoteInterest:
    """Every other replica's interest, merged per scope, and the generations read."""

    scopes: dict[str, Interest] = field(default_factory=dict)
    gens: dict[str, int] = field(default_factory=dict)


class WatcherPeer(Protocol):
    """The watcher as its coordinator sees it."""

    def local_interest(self) -> dict[str, Interest]:
        """What this replica's clients watch, per scope."""
        ...

    def set_remote(self, remote: RemoteInterest, urgent: set[str]) -> None:
        """The other replicas' interest (when leading); ``urgent`` scopes want a round soon."""
        ...

    def apply_remote(self, result: RoundResult) -> None:
        """Another replica's round (when following)."""
        ...

    def leadership_changed(self) -> None: ...


class RoundCoordinator(Protocol):
    """Decides whether this replica runs the rounds, and shares their results."""

    replica: str

    def leads(self) -> bool: ...

    def start(self, peer: WatcherPeer) -> None: ...

    async def close(self) -> None: ...

    def interest_changed(self, *, urgent: bool) -> int:
        """Publish this replica's interest soon (at once if ``urgent``, with a request
        for an early round); the generation that publication carries."""
        ...

    async def remote_interest(self) -> RemoteInterest:
        """The other replicas' interest, read at the start of a round (leader)."""
        ...

    async def share(self, result: RoundResult) -> None:
        """Send a round's result to the other replicas (leader)."""
        ...


class SoloCoordinator:
    """A server alone: it always leads, shares nothing."""

    replica = "solo"

    def leads(self) -> bool:
        return True

    def start(self, peer: WatcherPeer) -> None:
        return None

    async def close(self) -> None:
        return None

    def interest_changed(self, *, urgent: bool) -> int:
        return 0

    async def remote_interest(self) -> RemoteInterest:
        return RemoteInterest()

    async def share(self, result: RoundResult) -> None:
        return None


def lease_seconds(system: SystemSettings) -> float:
    """How long the lease lasts: two fast intervals, at least 2 s."""
    return max(2.0, 2 * system.watcher.min_interval)


def coordinator_factory(settings: Settings) -> Callable[[SystemSettings], RoundCoordinator]:
    """The coordinator of each system for the configured store."""
    idempotency = settings.idempotency
    if idempotency.backend != "redis" or idempotency.redis_url is None:
        if int(os.environ.get(WORKERS_ENV, "1")) <= 1:
            return lambda system: SoloCoordinator()
        from hpcgate.compute.watcher.lease_sqlite import SqliteCoordinator

        path = settings.state_path() / "watcher.sqlite3"
        return lambda system: SqliteCoordinator(
            path, system=system.name, lease_seconds=lease_seconds(system)
        )
    from hpcgate.compute.watcher.lease_redis import RedisCoordinator

    url = idempotency.redis_url.get_secret_value()
    prefix = idempotency.redis_key_prefix
    return lambda system: RedisCoordinator(
        url, prefix=prefix, system=system.name, lease_seconds=lease_seconds(system)
    )
