"""Coarse deadlines shared by many waiters: one loop timer per ``TICK`` instant.

Ten thousand open streams and long-polls each wait with a timeout (the heartbeat,
the long-poll's ``timeout``). A loop timer per wait costs ~0.3-0.45 KB each (the
handle, its arguments, uvloop's libuv timer); here a wait is one entry in the set
of the instant its timeout falls in (rounded up: a timeout fires up to ``TICK``
late, never early), and each instant has one timer.
"""

from __future__ import annotations

import asyncio
import math
import weakref

__all__ = ["TICK", "expire_after", "forget"]

TICK = 0.1
"""Seconds between the instants a timeout may fire at."""

_SLACK = 0.002  # a loop timer may fire a little early: the instant is surely passed


class _Instants:
    """The waiters of one event loop, by the instant their timeout falls in, and each
    instant's timer (the loop not referred to: it keys the weak mapping that holds
    this). An instant none waits for any more is dropped with its timer: long-poll
    timeouts are minutes away, and ten thousand clients come and go before them."""

    __slots__ = ("_timers", "_waiters")

    def __init__(self) -> None:
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def add(
        self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None], timeout: float
    ) -> int:
        instant = math.ceil((loop.time() + timeout) / TICK)
        waiters = self._waiters.get(instant)
        if waiters is None:
            waiters = self._waiters[instant] = set()
            self._timers[instant] = loop.call_at(instant * TICK + _SLACK, self._expire, instant)
        waiters.add(waiter)
        return instant

    def discard(self, instant: int, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(instant)
        if waiters is None:
            return
        waiters.discard(waiter)
        if not waiters:
            del self._waiters[instant]
            self._timers.pop(instant).cancel()

    def _expire(self, instant: int) -> None:
        del self._timers[instant]
        for waiter in self._waiters.pop(instant):
            if not waiter.done():
                waiter.set_result(None)


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Instants] = (
    weakref.WeakKeyDictionary()
)


def expire_after(waiter: asyncio.Future[None], timeout: float) -> int:
    """Resolve ``waiter`` (with None) once ``timeout`` seconds have passed, unless it is
    done by then; the instant returned is ``forget``'s argument."""
    loop = waiter.get_loop()
    instants = _BY_LOOP.get(loop)
    if instants is None:
        instants = _BY_LOOP[loop] = _Instants()
    return instants.add(loop, waiter, timeout)


def forget(waiter: asyncio.Future[None], instant: int) -> None:
    """``waiter`` no longer needs its timeout (it is done)."""
    instants = _BY_LOOP.get(waiter.get_loop())
    if instants is not None:
        instants.discard(instant, waiter)
