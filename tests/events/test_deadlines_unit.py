"""The coarse deadlines shared by waiting subscribers (``compute/watcher/deadlines``):
never early, at most one ``TICK`` late, one loop timer per instant, and a waiter
done before its timeout leaves nothing behind."""

from __future__ import annotations

import asyncio
import time

from hpcgate.compute.watcher import deadlines


def _pending(loop: asyncio.AbstractEventLoop) -> int:
    instants = deadlines._BY_LOOP.get(loop)
    return 0 if instants is None else sum(len(w) for w in instants._waiters.values())


async def test_timeouts_fire_not_early_and_at_most_a_tick_late() -> None:
    loop = asyncio.get_running_loop()
    for timeout in (0.0, 0.03, 0.15, 0.31):
        waiter: asyncio.Future[None] = loop.create_future()
        started = time.monotonic()
        deadlines.expire_after(waiter, timeout)
        await waiter
        waited = time.monotonic() - started
        assert timeout <= waited < timeout + deadlines.TICK + 0.1, (timeout, waited)
    assert _pending(loop) == 0


async def test_many_waiters_share_an_instant_and_done_ones_are_forgotten() -> None:
    loop = asyncio.get_running_loop()
    scheduled = len(getattr(loop, "_scheduled", ()))
    waiters: list[asyncio.Future[None]] = [loop.create_future() for _ in range(1000)]
    instants = [deadlines.expire_after(w, 0.2) for w in waiters]
    assert len(set(instants)) <= 2  # created within one tick or across its edge
    if hasattr(loop, "_scheduled"):  # the default loop: one timer per instant
        assert len(loop._scheduled) - scheduled <= 2
    for waiter, instant in zip(waiters[:600], instants[:600], strict=True):
        waiter.set_result(None)  # an event came first
        deadlines.forget(waiter, instant)
    assert _pending(loop) == 400
    await asyncio.wait_for(asyncio.gather(*waiters[600:]), 2)
    assert _pending(loop) == 0


async def test_an_instant_none_waits_for_is_dropped_with_its_timer() -> None:
    loop = asyncio.get_running_loop()
    waiters: list[asyncio.Future[None]] = [loop.create_future() for _ in range(100)]
    instants = [deadlines.expire_after(w, 300) for w in waiters]  # a long-poll's timeout
    for waiter, instant in zip(waiters, instants, strict=True):
        waiter.set_result(None)
        deadlines.forget(waiter, instant)
    kept = deadlines._BY_LOOP[loop]
    assert not kept._waiters and not kept._timers
    if hasattr(loop, "_scheduled"):  # the default loop: its timers (300 s out) cancelled
        ours = [h for h in loop._scheduled if abs(h.when() - loop.time() - 300) < 10]
        assert all(h.cancelled() for h in ours)


async def test_a_cancelled_waiter_is_left_alone() -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    instant = deadlines.expire_after(waiter, 0.05)
    waiter.cancel()  # its consumer's task was cancelled
    await asyncio.sleep(0.05 + deadlines.TICK + 0.05)  # the instant passes: no error
    assert waiter.cancelled()
    deadlines.forget(waiter, instant)
    assert _pending(loop) == 0
