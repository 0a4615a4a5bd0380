"""Two real server processes on the local Slurm site: with the SQLite store each
runs its own watcher rounds; sharing a real redis-server they run one round per
interval between them, a long-poll on each gets the terminal state, and when the
leader is killed (SIGKILL) the other takes over."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.events.conftest import MIN_INTERVAL, WATCHER
from tests.events.helpers import commands, scrape
from tests.events.test_streams import submit, wait_terminal
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

WINDOW = 4.0


def replicas(site_env: SiteEnv, tmp_path: Path, settings: dict[str, Any]) -> list[ApiServer]:
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir(parents=True)
        servers.append(
            start_server(
                site_env,
                tmp_path / name,
                overrides={"watcher": WATCHER},
                settings_overrides={"health": {"interval_seconds": 3600}, **settings},
            )
        )
    return servers


async def squeue_rounds(c: httpx.AsyncClient, servers: list[ApiServer]) -> list[float]:
    return [commands(await scrape(c, s.url), "squeue", source="watcher") for s in servers]


async def rounds_while_both_wait(
    servers: list[ApiServer], site_env: SiteEnv
) -> tuple[list[float], list[str]]:
    """A job that runs ~7 s, a long-poll for it on each replica; the watcher squeue
    commands each replica ran in a WINDOW in the middle, and the states the
    long-polls answered."""
    clients = [httpx.AsyncClient(base_url=s.url, headers=s.headers(), timeout=90) for s in servers]
    try:
        job_id = await submit(clients[0], servers[0], site_env, "sleep 7")
        waiters = [
            asyncio.create_task(wait_terminal(c, s, job_id))
            for c, s in zip(clients, servers, strict=True)
        ]
        await asyncio.sleep(1.5)  # both waiting, rounds at the fast pace
        before = await squeue_rounds(clients[0], servers)
        await asyncio.sleep(WINDOW)
        after = await squeue_rounds(clients[0], servers)
        ended = await asyncio.gather(*waiters)
    finally:
        for c in clients:
            await c.aclose()
    counts = [b - a for a, b in zip(before, after, strict=True)]
    return counts, [e["status"]["state"] for e in ended]


async def test_replicas_share_one_round_per_interval(
    site_env: SiteEnv, tmp_path: Path, redis_url: str
) -> None:
    solo = replicas(site_env, tmp_path / "sqlite", {})
    try:
        alone, states = await rounds_while_both_wait(solo, site_env)
    finally:
        for server in solo:
            server.stop()
    assert states == ["COMPLETED", "COMPLETED"]
    idempotency = {
        "backend": "redis",
        "redis_url": redis_url,
        "redis_key_prefix": f"replicas:{uuid.uuid4().hex[:8]}:",
    }
    shared = replicas(site_env, tmp_path / "redis", {"idempotency": idempotency})
    try:
        together, states = await rounds_while_both_wait(shared, site_env)
        assert states == ["COMPLETED", "COMPLETED"]
        expected = WINDOW / MIN_INTERVAL
        print(
            f"watcher squeue commands in {WINDOW:g} s (min_interval {MIN_INTERVAL:g} s): "
            f"SQLite {alone} (sum {sum(alone):g}), Redis {together} (sum {sum(together):g})"
        )
        assert all(n >= expected / 2 for n in alone), alone  # each polls for itself
        assert sorted(together)[0] == 0, together  # the follower runs none
        assert expected / 2 <= sum(together) <= expected + 2, together

        # the leader dies; the follower takes over and answers its own waiters
        leader, follower = (shared[0], shared[1]) if together[0] else (shared[1], shared[0])
        leader.process.kill()
        leader.process.wait()
        killed = time.monotonic()
        async with httpx.AsyncClient(
            base_url=follower.url, headers=follower.headers(), timeout=90
        ) as c:
            job_id = await submit(c, follower, site_env, "sleep 1")
            waiter = asyncio.create_task(wait_terminal(c, follower, job_id))
            start = (await squeue_rounds(c, [follower]))[0]
            while (await squeue_rounds(c, [follower]))[0] == start:
                assert time.monotonic() - killed < 15, "no takeover"
                await asyncio.sleep(0.1)
            takeover = time.monotonic() - killed
            ended = await waiter
        print(f"takeover: the follower polled {takeover:.1f} s after the leader was killed")
        assert ended["status"]["state"] == "COMPLETED"
        assert takeover < 2 * max(2.0, 2 * MIN_INTERVAL) + 2
        assert "took the round lease" in follower.log()
    finally:
        for server in shared:
            server.stop()
