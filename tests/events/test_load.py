"""1,000 concurrent waiters on 50 jobs cost the scheduler what one waiter costs."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import pytest

from tests.events.conftest import MIN_INTERVAL, remote
from tests.events.helpers import commands, metric_values, rounds, sse_events
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e, pytest.mark.slow]

JOBS = 50
STREAMS = 500
LONG_POLLS = 500
WINDOW = 6.0


async def _lines(response: aiohttp.ClientResponse):
    async for raw in response.content:
        yield raw.decode().rstrip("\r\n")


class Client:
    def __init__(self, session: aiohttp.ClientSession, server: ApiServer) -> None:
        self.session = session
        self.base = f"{server.url}/compute/{server.system}"
        self.url = server.url
        self.headers = server.headers("hpcuser1")

    async def submit(self, body: dict[str, Any]) -> str:
        async with self.session.post(f"{self.base}/jobs", json=body, headers=self.headers) as r:
            assert r.status == 201, await r.text()
            return (await r.json())["jobId"]

    async def long_poll(self, job_id: str) -> tuple[str, str]:
        params = {"waitFor": "terminal", "timeout": "120"}
        async with self.session.get(
            f"{self.base}/jobs/{job_id}", params=params, headers=self.headers
        ) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
            return body["jobs"][0]["status"]["state"], r.headers["X-Hpcgate-Wait"]

    async def stream(self, job_id: str) -> tuple[str, int]:
        async with self.session.get(f"{self.base}/jobs/{job_id}/events", headers=self.headers) as r:
            assert r.status == 200, await r.text()
            events = [e async for e in sse_events(_lines(r)) if e.event != "comment"]
        assert events and events[-1].event == "terminal", events
        ids = [int(e.id) for e in events if e.id]
        assert ids == sorted(set(ids)), ids
        return events[-1].state, len(events)

    async def metrics(self) -> str:
        async with self.session.get(f"{self.url}/metrics") as r:
            return await r.text()


async def test_thousand_waiters_cost_one_waiters_commands(
    events_server: ApiServer, site_env: SiteEnv, ssh_as
) -> None:
    name = f"ev-load-{uuid.uuid4().hex[:8]}"
    body = {
        "job": {
            "name": name,
            "workingDirectory": site_env.scratch("hpcuser1"),
            "script": "#!/bin/bash\nsleep 300\n",
            "standardOutput": "/dev/null",
        }
    }
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=90)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(session, events_server)
        try:
            # inside the try: if one submission fails, the others' jobs are cancelled too
            ids = await asyncio.gather(*(client.submit(body) for _ in range(JOBS)))
            # one waiter
            one = asyncio.create_task(client.long_poll(ids[0]))
            await asyncio.sleep(2 * MIN_INTERVAL)
            m0 = await client.metrics()
            await asyncio.sleep(WINDOW)
            m1 = await client.metrics()
            one.cancel()
            squeue_one, rounds_one = (
                commands(m1, "squeue") - commands(m0, "squeue"),
                rounds(m1) - rounds(m0),
            )
            assert rounds_one >= WINDOW / MIN_INTERVAL - 2
            assert squeue_one == rounds_one
            assert commands(m1, "sacct") == commands(m0, "sacct")

            # 1,000 waiters: half SSE streams, half long-polls, 20 per job
            m2 = await client.metrics()
            streams = [asyncio.create_task(client.stream(ids[i % JOBS])) for i in range(STREAMS)]
            polls = [
                asyncio.create_task(client.long_poll(ids[i % JOBS])) for i in range(LONG_POLLS)
            ]
            deadline = time.monotonic() + 60
            while True:
                m3 = await client.metrics()
                sse = metric_values(m3, "hpcgate_sse_subscribers")
                waiting = metric_values(m3, "hpcgate_longpoll_waiters")
                if sse == STREAMS and waiting == LONG_POLLS:
                    break
                assert time.monotonic() < deadline, (sse, waiting)
                await asyncio.sleep(0.5)
            # registering them ran no per-waiter command: rounds only
            assert commands(m3, "squeue", source="request") == commands(
                m2, "squeue", source="request"
            )
            assert commands(m3, "squeue") - commands(m2, "squeue") == rounds(m3) - rounds(m2)
            assert commands(m3, "sacct") == commands(m2, "sacct")

            await asyncio.sleep(WINDOW)
            m4 = await client.metrics()
            squeue_many = commands(m4, "squeue") - commands(m3, "squeue")
            rounds_many = rounds(m4) - rounds(m3)
            assert squeue_many == rounds_many  # one squeue per round
            assert squeue_many <= squeue_one + 1  # and no more rounds than for one waiter
            assert commands(m4, "sacct") == commands(m3, "sacct")
            assert commands(m4, "sbatch") == commands(m3, "sbatch")

            # all jobs end: every waiter gets the terminal state
            await remote(ssh_as, "hpcuser1", "scancel", f"--name={name}")
            results = await asyncio.wait_for(asyncio.gather(*streams, *polls), 60)
            stream_results, poll_results = results[:STREAMS], results[STREAMS:]
            assert {state for state, _ in stream_results} == {"CANCELLED"}
            assert set(poll_results) == {("CANCELLED", "terminal")}
            m5 = await client.metrics()
            # the end of 50 jobs took a few rounds with one sacct each, not one per waiter
            assert commands(m5, "sacct") - commands(m4, "sacct") <= rounds(m5) - rounds(m4)
        finally:
            await remote(ssh_as, "hpcuser1", "scancel", f"--name={name}")
