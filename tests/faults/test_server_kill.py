"""The server killed (SIGKILL) mid-work on the private site, then started again.

During the kill, SSE streams and long-polls are waiting and keyed submissions are
in flight (some stalled between sbatch and recording their job: ``tests.faults``).
Clients reconnect (SSE with ``Last-Event-ID``) and retry with their keys. Verdict as
for the daemon drills (``Drill.verify``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.drill import Drill, step
from tests.private_site import PrivateServer, PrivateSite

pytestmark = [pytest.mark.site, pytest.mark.slow]


async def test_server_killed_during_sse_and_long_polls(
    private_site: PrivateSite, drill_ready: PrivateServer
) -> None:
    drill = Drill("server-sigkill", private_site, drill_ready, job_seconds=8)
    async with drill.load():
        deadline = time.monotonic() + 30
        while not {"sse", "longpoll"} <= waiting(drill):
            assert time.monotonic() < deadline, "no SSE and long-poll waiter opened"
            await asyncio.sleep(0.1)
        drill.notes["waiting_at_kill"] = sorted(waiting(drill))
        async with drill.fault():
            await step(drill_ready.kill)
            await asyncio.sleep(1)
            await step(drill_ready.restart)
    await drill.verify()


def waiting(drill: Drill) -> set[str]:
    """The kinds of waiter following a job that has not ended."""
    return {s.waiter for s in drill.submissions if s.job_id and s.final is None and s.waiter}
