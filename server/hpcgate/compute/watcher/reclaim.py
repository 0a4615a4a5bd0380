"""Give memory back to the system after many event subscribers went away.

Ten thousand open streams cost the server tens of megabytes; once they close, the
Python objects are freed, but the C allocator keeps the freed pages in its heap and
the collector finds the last reference cycles (cancelled requests, exceptions with
their frames) only at its next full pass. Measured (``bench/clients_bench.py``),
the process then stayed at its peak size for good. So after a large drop in
subscribers (at least ``min_drop`` and at least half of the peak), once the drop
has stopped for ``delay`` (a mass disconnect is handled once), one full collection runs and
glibc's ``malloc_trim(0)`` hands the free pages back. Both take tens of
milliseconds and run at most twice per drop (again ``again`` seconds later, when the
idle kept-alive connections of the ended requests have closed).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is no such function (musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Reclaimer:
    """Watches the number of open subscribers; after a large drop, collects and trims."""

    def __init__(self, *, min_drop: int = 1000, delay: float = 1.0, again: float = 10.0) -> None:
        self.min_drop = min_drop
        self.delay = delay
        self.again = again
        self.peak = 0
        self.current = 0
        self.runs = 0
        self._timer: asyncio.TimerHandle | None = None
        self._seen = 0  # ``current`` when the timer was set
        self._waits = 0
        self._trim: Callable[[], object] | bool | None = False  # False: not looked up yet

    def changed(self, total: int) -> None:
        """The number of open subscribers is now ``total``."""
        self.current = total
        if total > self.peak:
            self.peak = total
            return
        drop = self.peak - total
        if self._timer is None and drop >= self.min_drop and total * 2 <= self.peak:
            self._waits = 0
            self._arm()

    def _arm(self) -> None:
        self._seen = self.current
        self._timer = asyncio.get_running_loop().call_later(self.delay, self._run)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _run(self) -> None:
        self._timer = None
        if self.current < self._seen and self._waits < 10:
            self._waits += 1  # still dropping: once they are all gone (10 delays at most)
            self._arm()
            return
        self.peak = self.current
        self.runs += 1
        self._reclaim()
        # once more when kept-alive connections of the closed requests have timed out
        self._timer = asyncio.get_running_loop().call_later(self.again, self._after)

    def _after(self) -> None:
        self._timer = None
        self._reclaim()

    def _reclaim(self) -> None:
        gc.collect()
        if self._trim is False:
            self._trim = _malloc_trim()
        if callable(self._trim):
            self._trim()
