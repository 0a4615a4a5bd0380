"""Accounting out of reach, on the real site, for one server process alone.

The shared slurmdbd keeps running (other tests use it). This server's
``scheduler.sacct_path`` is a wrapper that, while a switch file exists, runs the real
``/usr/bin/sacct`` with a copy of the site's slurm.conf whose
``AccountingStoragePort`` is a port nothing listens on: the real client fails for
real, as it does when slurmdbd is stopped ("Connection refused" from the persistent
connection to slurmdbd). Everything else (slurmctld, sshd, the filesystems) is the
shared site's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.events.conftest import WATCHER
from tests.events.helpers import metric_values, scrape
from tests.events.test_streams import client, submit, wait_terminal
from tests.server import ApiServer, free_port, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]


@dataclass
class BrokenAccounting:
    """The wrapper (``path``) and its switch: accounting is down while ``down``."""

    path: Path
    switch: Path

    @property
    def down(self) -> bool:
        return self.switch.exists()

    @down.setter
    def down(self, value: bool) -> None:
        if value:
            self.switch.touch()
        else:
            self.switch.unlink(missing_ok=True)


@pytest.fixture
def broken_accounting(site_env: SiteEnv) -> Iterator[BrokenAccounting]:
    own = Path(tempfile.mkdtemp(prefix="hpcgate-acct-"))
    os.chmod(own, 0o755)  # the service identity and the users run the wrapper
    dead_port = free_port()  # bound and closed again: nothing listens there
    conf = Path(site_env["SLURM_CONF"]).read_text().splitlines()
    conf = [
        f"AccountingStoragePort={dead_port}" if line.startswith("AccountingStoragePort=") else line
        for line in conf
    ]
    assert f"AccountingStoragePort={dead_port}" in conf
    (own / "slurm.conf").write_text("\n".join(conf) + "\n")
    os.chmod(own / "slurm.conf", 0o644)
    wrapper = own / "sacct"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ -e {own}/down ]; then SLURM_CONF={own}/slurm.conf; export SLURM_CONF; fi\n"
        'exec /usr/bin/sacct "$@"\n'
    )
    os.chmod(wrapper, 0o755)
    yield BrokenAccounting(wrapper, own / "down")
    shutil.rmtree(own, ignore_errors=True)


def accounting_health(server: ApiServer) -> dict:
    with server.client() as c:
        [system] = c.get("/status/systems").json()["systems"]
    [health] = [h for h in system["servicesHealth"] if h["serviceType"] == "accounting"]
    others = [h for h in system["servicesHealth"] if h["serviceType"] != "accounting"]
    assert all(h["healthy"] and h["status"] == "healthy" for h in others), others
    return health


def wait_for(predicate, seconds: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - started


async def test_accounting_down_degrades_and_loses_nothing(
    site_env: SiteEnv, tmp_path: Path, broken_accounting: BrokenAccounting
) -> None:
    server = start_server(
        site_env,
        tmp_path,
        overrides={
            "scheduler": {
                "type": "slurm",
                "transfer_partition": site_env["HPC_SITE_XFER_PARTITION"],
                "sacct_path": str(broken_accounting.path),
            },
            "watcher": WATCHER,
        },
        settings_overrides={
            "health": {"interval_seconds": 2, "timeout_seconds": 10, "retry_seconds": 0.5}
        },
    )
    system = server.system
    try:
        assert accounting_health(server)["status"] == "healthy"
        broken_accounting.down = True
        took = wait_for(lambda: accounting_health(server)["status"] == "degraded", 10, "degraded")
        health = accounting_health(server)
        print(f"accounting shown degraded {took:.1f} s after the fault: {health}")
        assert health["healthy"] is False
        assert "slurmdbd" in health["message"]
        async with client(server) as c:
            job_id = await submit(c, server, site_env, "sleep 2")
            # every route answers meanwhile: the job, the filesystem, the scheduler
            lookup = await c.get(f"/compute/{system}/jobs/{job_id}")
            assert lookup.status_code == 200, lookup.text
            home = site_env.home("hpcuser1")
            ls = await c.get(f"/filesystem/{system}/ops/ls", params={"path": home})
            assert ls.status_code == 200, ls.text
            assert (await c.get(f"/status/{system}/partitions")).status_code == 200
            # the listing answers the controller's jobs and says what it lacks
            listing = await c.get(f"/compute/{system}/jobs")
            assert listing.status_code == 200, listing.text
            assert job_id in {job["jobId"] for job in listing.json()["jobs"]}
            assert "slurmdbd" in listing.headers["X-Hpcgate-Jobs-Incomplete"]
            # the waiter gets the terminal state from the controller alone
            started = time.monotonic()
            ended = await wait_terminal(c, server, job_id)
            print(f"terminal state {time.monotonic() - started:.1f} s after the long-poll began")
            assert ended["status"]["state"] == "COMPLETED"
            assert ended["status"]["exitCode"] == 0
            text = await scrape(c, server.url)
        assert metric_values(text, "hpcgate_watcher_rounds_total", outcome="error") == 0
        assert metric_values(text, "hpcgate_watcher_rounds_total", outcome="partial") >= 1
        log = server.log()
        assert "job accounting failed; answering from the controller alone" in log
        assert "slurmdbd" in log
        assert "Slurm controller (slurmctld) is not reachable" not in log

        broken_accounting.down = False
        took = wait_for(lambda: accounting_health(server)["status"] == "healthy", 10, "healthy")
        print(f"accounting healthy again {took:.1f} s after the fix")
        async with client(server) as c:
            listing = await c.get(f"/compute/{system}/jobs")
            assert listing.status_code == 200, listing.text
            assert "X-Hpcgate-Jobs-Incomplete" not in listing.headers

            async def accounted() -> bool:
                answer = await c.get(f"/compute/{system}/jobs/{job_id}")
                assert answer.status_code == 200, answer.text
                return bool(answer.json()["jobs"][0].get("tasks"))

            deadline = time.monotonic() + 15
            while not await accounted():  # the job's steps: accounting's details
                assert time.monotonic() < deadline, "ended job never settled"
                await asyncio.sleep(0.2)
        assert "job accounting answers again" in server.log()
    finally:
        broken_accounting.down = False
        server.stop()


def test_the_wrapper_fails_like_a_stopped_slurmdbd(
    site_env: SiteEnv, broken_accounting: BrokenAccounting
) -> None:
    """The fault is the real client's: sacct cannot reach slurmdbd's port."""

    def sacct() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(broken_accounting.path), "-n", "-X", "-S", "now-60"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "SLURM_CONF": site_env["SLURM_CONF"]},
        )

    broken_accounting.down = True
    failed = sacct()
    assert failed.returncode != 0
    assert "Problem talking to the database: Connection refused" in failed.stderr
    broken_accounting.down = False
    ok = sacct()
    assert ok.returncode == 0, ok.stderr
