"""slurmdbd really stopped, on the private site (its controller forgets ended jobs
after a few seconds): health shows accounting degraded and refuses no route, a
long-poll gets the terminal state from the controller, and once slurmdbd is back the
ended job (forgotten by the controller meanwhile) gets its accounting details."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.events.conftest import WATCHER
from tests.events.test_accounting_site import accounting_health, wait_for
from tests.events.test_streams import client, submit, wait_terminal
from tests.private_site import MIN_JOB_AGE, PrivateSite

pytestmark = [pytest.mark.site, pytest.mark.e2e]


async def test_slurmdbd_stopped_degrades_and_loses_nothing(
    private_site: PrivateSite, private_server, tmp_path: Path
) -> None:
    server = private_server(
        tmp_path,
        overrides={"watcher": WATCHER},
        settings_overrides={
            "health": {"interval_seconds": 2, "timeout_seconds": 10, "retry_seconds": 0.5}
        },
    )
    env = private_site.env
    system = server.system
    async with client(server) as c:
        job_id = await submit(c, server, env, "sleep 3")
        with private_site.stopped("slurmdbd"):
            stopped = time.monotonic()
            took = wait_for(
                lambda: accounting_health(server)["status"] == "degraded", 15, "degraded"
            )
            print(f"accounting degraded {took:.1f} s after slurmdbd stopped")
            assert "slurmdbd" in accounting_health(server)["message"]
            home = env.home("hpcuser1")
            assert (
                await c.get(f"/filesystem/{system}/ops/ls", params={"path": home})
            ).status_code == 200
            assert (await c.get(f"/compute/{system}/jobs/{job_id}")).status_code == 200
            ended = await wait_terminal(c, server, job_id)
            assert ended["status"]["state"] == "COMPLETED"
            assert not ended.get("tasks")  # the controller's record alone
            # the controller forgets the job while accounting is still down
            await asyncio.sleep(MIN_JOB_AGE + 3)
            held = time.monotonic() - stopped
        print(f"slurmdbd was stopped for {held:.1f} s")
        took = wait_for(lambda: accounting_health(server)["status"] == "healthy", 30, "healthy")
        print(f"accounting healthy {took:.1f} s after slurmdbd started")
        # slurmctld sends the records it queued meanwhile once it reconnects
        deadline = time.monotonic() + 60
        while True:
            answer = await c.get(f"/compute/{system}/jobs/{job_id}")
            assert answer.status_code == 200, answer.text
            job = answer.json()["jobs"][0]
            if job.get("tasks"):
                break
            assert time.monotonic() < deadline, "the ended job never got accounting's details"
            await asyncio.sleep(0.5)
        assert job["status"]["state"] == "COMPLETED"
    log = server.log()
    assert "job accounting failed; answering from the controller alone" in log
    assert "watcher round failed" not in log
