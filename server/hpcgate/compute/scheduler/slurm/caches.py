"""Bounded, expiring maps: the Slurm scheduler's caches (per user, see ``scheduler``)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from hpcgate.compute.scheduler.models import Job

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded map whose entries expire ``ttl`` seconds after they were put."""

    def __init__(
        self,
        ttl: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        self._expire()
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, key: K) -> V | None:
        self._expire()
        entry = self._entries.get(key)
        return entry[1] if entry else None

    def items(self) -> list[tuple[K, V]]:
        self._expire()
        return [(key, value) for key, (_, value) in self._entries.items()]

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        limit = self._clock() - self.ttl
        while self._entries:
            key, (added, _) = next(iter(self._entries.items()))
            if added >= limit:
                break
            del self._entries[key]


class RecentSubmissions(TtlCache[tuple[str | None, str], Job]):
    """Jobs this server submitted in the last ``ttl`` seconds, per user, bounded.

    They answer lookups while the scheduler does not list them yet, so a job just
    submitted never answers 404.
    """

    def add(self, user: str | None, job: Job) -> None:
        self.put((user, job.job_id), job)

    def of_user(self, user: str | None) -> list[Job]:
        return [job for (owner, _), job in self.items() if owner == user]
