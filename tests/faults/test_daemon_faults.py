"""sshd, slurmctld and slurmdbd stopped (then started) under load, on the private site.

Clients keep submitting (with Idempotency-Key, some timing out and retrying), waiting
(SSE, long-poll, polling) and using files while the daemon is away. Verdict
(``Drill.verify``): 0 jobs lost or duplicated, every waiter gets the right terminal
state, no route fails more than 5 s after the daemon is back. A hold of 0 is a
restart.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.drill import Drill, step
from tests.private_site import PrivateServer, PrivateSite

pytestmark = [pytest.mark.site, pytest.mark.slow]


@pytest.mark.parametrize(
    ("daemon", "hold"),
    [
        ("sshd", 0.0),
        ("sshd", 3.0),
        ("slurmctld", 0.0),
        ("slurmctld", 12.0),
        ("slurmdbd", 0.0),
        ("slurmdbd", 15.0),
    ],
    ids=lambda v: f"{v:g}s" if isinstance(v, float) else v,
)
async def test_daemon_fault_under_load(
    private_site: PrivateSite, drill_ready: PrivateServer, daemon: str, hold: float
) -> None:
    name = f"{daemon}-restart" if hold == 0 else f"{daemon}-stopped-{hold:g}s"
    drill = Drill(name, private_site, drill_ready)
    async with drill.load():
        await asyncio.sleep(1.5)  # submissions and waiters are under way
        async with drill.fault():
            await step(private_site.stop, daemon)
            await asyncio.sleep(hold)
            await step(private_site.start, daemon)
    await drill.verify()
