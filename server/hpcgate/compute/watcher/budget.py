"""The subscriber budgets of a system: open event streams and long-polls, per user
and in all. A place is checked and taken at once, so concurrent requests cannot
overshoot, and always given back (``Slot.release``, at garbage collection at the
latest), so no path can leak a user's quota."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from hpcgate import errors
from hpcgate.config import WatcherSettings

SLOT_RETRY_AFTER = 5
"""Retry-After (seconds) of a 429 for a user's full stream budget."""


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


class SubscriberBudget:
    """At most ``max_subscribers`` places in all and ``max_subscribers_per_user`` per
    user on ``system`` (read from ``settings`` at each request)."""

    def __init__(self, system: str, settings: WatcherSettings) -> None:
        self.system = system
        self.settings = settings
        self._held: Counter[str] = Counter()
        self._held_total = 0

    def check(self, user: str | None = None) -> None:
        """``ServiceUnavailable`` when ``max_subscribers`` places are taken;
        ``TooManyRequests`` when ``user`` holds ``max_subscribers_per_user``."""
        if self._held_total >= self.settings.max_subscribers:
            raise errors.ServiceUnavailable("Too many event subscribers; retry later")
        if user is not None and self._held[user] >= self.settings.max_subscribers_per_user:
            raise errors.TooManyRequests(
                f"At most {self.settings.max_subscribers_per_user} open event streams and "
                f"long-polls per user on system '{self.system}' "
                "(watcher.max_subscribers_per_user): close one or retry later",
                retry_after=SLOT_RETRY_AFTER,
            )

    def acquire(self, user: str, kind: str) -> Slot:
        """A place for one stream or long-poll of ``user``; ``release()`` it at the end."""
        self.check(user)
        self._held[user] += 1
        self._held_total += 1
        return Slot(user, kind, self._give_back)

    def _give_back(self, slot: Slot) -> None:
        self._held_total -= 1
        self._held[slot.user] -= 1
        if self._held[slot.user] <= 0:
            del self._held[slot.user]

    def held(self, user: str) -> int:
        """Places ``user`` holds now."""
        return self._held[user]
