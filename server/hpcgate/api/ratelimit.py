"""Per-user token buckets: one user's request rate cannot starve the others.

Each authenticated user name has a bucket of ``burst`` tokens refilled at
``requests_per_second``; a request takes one token or is refused with the wait
until the next one. Memory is bounded: buckets are kept in least-recently-used
order, a bucket that has refilled completely is the same as a new one and is
dropped, and beyond ``max_users`` the least recently used bucket goes (its user
starts again with a full bucket: generous, but bounded).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets keyed by user name (not thread-safe: one event loop uses it)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        max_users: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_users < 1:
            raise ValueError("rate must be positive, burst and max_users at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_users = max_users
        self._clock = clock
        self._refill_seconds = burst / rate
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if granted, else the seconds until one is."""
        now = self._clock()
        self._drop_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_users:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _drop_idle(self, now: float) -> None:
        """Drop buckets, oldest first, that have refilled since their last use."""
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if now - oldest.updated < self._refill_seconds:
                return
            self._buckets.popitem(last=False)


def retry_after_seconds(wait: float) -> int:
    """``Retry-After`` for a wait: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))
