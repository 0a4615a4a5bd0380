"""The compact subscriber record and the memory reclaimer (no site: their own logic).

The streams and long-polls built on them run against the real site and server in
``test_streams.py``, ``test_load.py`` and ``bench/clients_bench.py``.
"""

from __future__ import annotations

import asyncio
import time

from hpcgate.compute.watcher import QUEUE_LIMIT, JobEvent, Subscription
from hpcgate.compute.watcher.reclaim import Reclaimer
from tests.events.fakes import make_job


def _event(seq: int) -> JobEvent:
    return JobEvent(seq, make_job("7", "RUNNING"))


async def test_wait_wakes_on_delivery_close_and_timeout() -> None:
    sub = Subscription("u", frozenset({"7"}), "sse")
    waiting = asyncio.ensure_future(sub.wait(30))
    await asyncio.sleep(0)
    sub.deliver("7", _event(1))
    await asyncio.wait_for(waiting, 2)
    assert [event.seq for _, event in sub.take()] == [1]
    assert sub.take() == []

    started = time.monotonic()
    await sub.wait(0.05)  # nothing comes: the timeout
    assert 0.04 <= time.monotonic() - started < 2

    waiting = asyncio.ensure_future(sub.wait(30))
    await asyncio.sleep(0)
    sub.close()
    await asyncio.wait_for(waiting, 2)
    sub.deliver("7", _event(2))  # a closed subscription takes nothing more
    assert sub.closed and sub.take() == []


async def test_bounded_and_json_made_once() -> None:
    sub = Subscription("u", None, "sse")
    event = _event(5)
    for _ in range(QUEUE_LIMIT + 3):
        sub.deliver("7", event)
    assert sub.overflowed and len(sub.take()) == QUEUE_LIMIT
    await sub.wait(30)  # overflowed: returns at once
    assert event.job_json is event.job_json and '"jobId":"7"' in event.job_json


async def test_reclaimer_runs_once_after_a_large_drop() -> None:
    reclaimer = Reclaimer(min_drop=10, delay=0.05, again=0.05)
    for total in range(1, 21):
        reclaimer.changed(total)
    reclaimer.changed(15)  # a small drop: nothing
    await asyncio.sleep(0.1)
    assert reclaimer.runs == 0
    for total in range(14, -1, -1):
        reclaimer.changed(total)
    await asyncio.sleep(0.3)
    assert reclaimer.runs == 1 and reclaimer.peak == 0
    reclaimer.close()
