"""Two watchers (as two replicas would) sharing a real redis-server, or one SQLite
file (the workers of one host): one round per interval between them, results
delivered to both, and a takeover when the leader dies. The scheduler is scripted
(each replica's own copy over the same jobs, so each replica's commands are counted
apart); the real-process tests are ``test_watcher_replicas`` and
``tests/api/test_workers.py``."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hpcgate.compute.watcher import JobWatcher
from hpcgate.compute.watcher.lease_redis import RedisCoordinator
from hpcgate.compute.watcher.lease_sqlite import SqliteCoordinator
from hpcgate.operations.metrics import Metrics
from tests.events.fakes import FakeRunner, FakeScheduler
from tests.events.test_watcher_unit import MIN, system

LEASE = 1.0


@pytest.fixture(params=["redis", "sqlite"])
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[list[tuple[JobWatcher, FakeScheduler]]]:
    prefix = f"lease-{uuid.uuid4().hex[:8]}:"
    jobs: dict[str, tuple[str, str]] = {}
    replicas = []
    for _ in range(2):
        fake = FakeScheduler()
        fake.jobs = jobs  # one cluster, each replica's commands counted apart
        coordinator: RedisCoordinator | SqliteCoordinator
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
            coordinator = RedisCoordinator(url, prefix=prefix, system="c", lease_seconds=LEASE)
        else:
            path = tmp_path / "watcher.sqlite3"
            coordinator = SqliteCoordinator(path, system="c", lease_seconds=LEASE)
        watcher = JobWatcher(
            system(service_user="svc"), fake, FakeRunner, metrics=Metrics(), coordinator=coordinator
        )
        watcher.start()
        replicas.append((watcher, fake))
    await until(lambda: sum(w.coordinator.leads() for w, _ in replicas) == 1)
    yield replicas
    for watcher, _ in replicas:
        await watcher.close()


async def until(predicate: Callable[[], bool], seconds: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def roles(pair):
    leader = next(p for p in pair if p[0].coordinator.leads())
    follower = next(p for p in pair if not p[0].coordinator.leads())
    return leader, follower


async def test_one_replica_polls_and_both_deliver(pair) -> None:
    (leader, lead_fake), (follower, follow_fake) = roles(pair)
    lead_fake.set("5", "RUNNING")
    lead_fake.set("6", "PENDING")
    # the follower's clients alone watch job 6: the leader polls it for them
    subs = [leader.subscribe("alice", ["5"], "sse"), follower.subscribe("alice", ["5"], "sse")]
    only_follower = follower.subscribe("alice", ["6"], "sse")
    for sub in [*subs, only_follower]:
        _, event = await asyncio.wait_for(sub.queue.get(), 5)
        assert not event.terminal
    before = (lead_fake.calls["squeue"], follow_fake.calls["squeue"])
    await asyncio.sleep(20 * MIN)
    polled = (lead_fake.calls["squeue"] - before[0], follow_fake.calls["squeue"] - before[1])
    assert polled[1] == 0, polled
    assert 5 <= polled[0] <= 30, polled  # one round per interval, for both replicas
    lead_fake.set("5", "COMPLETED")
    lead_fake.set("6", "FAILED")
    for sub in [*subs, only_follower]:
        _, event = await asyncio.wait_for(sub.queue.get(), 5)
        assert event.terminal
    assert follow_fake.calls == {}  # not one command from the follower
    view = follower.current("alice", "6")
    assert view is not None
    await until(lambda: view.final)  # settled by the leader's accounting, applied here
    assert view.job.tasks


async def test_a_followers_waiter_is_answered_by_the_leaders_round(pair) -> None:
    (_, lead_fake), (follower, follow_fake) = roles(pair)
    lead_fake.set("9", "RUNNING")
    started = time.monotonic()
    view = await follower.view("alice", "9")
    assert view.job.status.state == "RUNNING"
    assert time.monotonic() - started < 2.0
    lead_fake.set("10", "COMPLETED")
    lead_fake.purged.add("10")  # only accounting knows it
    assert (await follower.view("alice", "10")).job.status.state == "COMPLETED"
    assert follow_fake.calls == {}


async def test_the_follower_takes_over_when_the_leader_dies(pair) -> None:
    (leader, lead_fake), (follower, follow_fake) = roles(pair)
    lead_fake.set("11", "RUNNING")
    sub = follower.subscribe("alice", ["11"], "sse")
    await asyncio.wait_for(sub.queue.get(), 5)
    # the leader dies: its loop and lease keeper stop, nothing is given back
    coordinator = leader.coordinator
    assert isinstance(coordinator, RedisCoordinator | SqliteCoordinator)
    for task in [leader._task, *coordinator._tasks]:
        assert task is not None
        task.cancel()
    died = time.monotonic()
    took = await until(lambda: follow_fake.calls["squeue"] > 0)
    print(f"takeover {took:.2f} s after the leader died (lease {LEASE} s)")
    assert follower.coordinator.leads()
    assert took <= LEASE + 1.0
    lead_fake.set("11", "COMPLETED")
    _, event = await asyncio.wait_for(sub.queue.get(), 5)
    assert event.terminal
    assert time.monotonic() - died < LEASE + 3.0
