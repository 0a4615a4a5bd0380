"""Health recovers as fast as the fault: re-checks within seconds after a failure,
on demand when a refused request arrives (one check in flight, shared), a
``Retry-After`` that says when the next check runs, and per-service refusals."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from hpcgate.errors import ServiceUnavailable
from hpcgate.operations.health import HealthChecker, Probe, ServiceType
from tests.server import start_server
from tests.site import SiteEnv


class FakeProbe:
    """A check that fails while ``broken``, counting calls and concurrency."""

    def __init__(self, delay: float = 0.0) -> None:
        self.broken = False
        self.calls: list[float] = []
        self.running = 0
        self.most_running = 0
        self.delay = delay

    async def __call__(self) -> None:
        self.calls.append(time.monotonic())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.broken:
                raise RuntimeError("remote text that callers must not see")
        finally:
            self.running -= 1


def _retry_after(checker: HealthChecker, service: ServiceType = "filesystem") -> int:
    with pytest.raises(ServiceUnavailable) as refused:
        checker.ensure_healthy("sys", service)
    assert "remote text" not in str(refused.value)
    return int(refused.value.headers["Retry-After"])


async def test_failed_check_is_retried_with_backoff_capped_at_interval() -> None:
    probe = FakeProbe()
    probe.broken = True
    checker = HealthChecker(
        {"sys": [Probe("filesystem", probe)]}, interval=0.8, timeout=1, retry=0.1
    )
    await checker.check_now()
    checker.start()
    try:
        await asyncio.sleep(2.0)
        gaps = [b - a for a, b in zip(probe.calls, probe.calls[1:], strict=False)]
        # 0.1, 0.2, 0.4, then the interval (0.8)
        for gap, expected in zip(gaps[:4], [0.1, 0.2, 0.4, 0.8], strict=True):
            assert expected - 0.01 <= gap < expected + 0.08, gaps
        probe.broken = False
        await asyncio.sleep(0.9)
        checker.ensure_healthy("sys", "filesystem")
        # healthy again: back to one check per interval
        count = len(probe.calls)
        await asyncio.sleep(0.5)
        assert len(probe.calls) - count <= 1
    finally:
        await checker.stop()


async def test_refused_request_brings_the_check_forward_once() -> None:
    probe = FakeProbe(delay=0.2)
    probe.broken = True
    checker = HealthChecker(
        {"sys": [Probe("filesystem", probe)]}, interval=30, timeout=5, retry=0.3
    )
    await checker.check_now()
    checker.start()
    try:
        await asyncio.sleep(0.35)  # the first retry (0.3 s after the failure) is running
        await asyncio.sleep(0.3)  # and failed: the next one is due in 0.6 s
        assert len(probe.calls) == 2
        probe.broken = False
        # many requests: the next check is brought forward to 0.3 s after the last,
        # and runs once for all of them
        for _ in range(20):
            assert _retry_after(checker) == 1
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.6)
        assert len(probe.calls) == 3
        assert probe.most_running == 1
        checker.ensure_healthy("sys", "filesystem")
    finally:
        await checker.stop()


async def test_retry_after_is_the_time_to_the_next_check() -> None:
    probe = FakeProbe()
    probe.broken = True
    checker = HealthChecker({"sys": [Probe("filesystem", probe)]}, interval=30, timeout=5, retry=4)
    await checker.check_now()  # not started: only on-demand checks
    assert _retry_after(checker) == 4
    # without a running checker the demand cannot move anything: still ~4 s away
    assert _retry_after(checker) in (3, 4)


async def test_one_service_down_refuses_only_its_routes() -> None:
    scheduler, filesystem = FakeProbe(), FakeProbe()
    scheduler.broken = True
    checker = HealthChecker(
        {"sys": [Probe("scheduler", scheduler), Probe("filesystem", filesystem)]},
        interval=30,
        timeout=5,
        retry=1,
    )
    await checker.check_now()
    checker.ensure_healthy("sys", "filesystem")
    assert _retry_after(checker, "scheduler") >= 1
    health = checker.health("sys")
    assert health is not None
    assert [h.healthy for h in health] == [False, True]
    assert health[0].message == "the check failed"


@pytest.mark.site
def test_routes_answer_again_within_seconds_of_the_fault_ending(
    site_env: SiteEnv, tmp_path: Path
) -> None:
    """A filesystem the service identity cannot see for 3 s (renamed away and back,
    under a directory this test owns; nothing shared is touched) from 1 s before a
    periodic round, with a 30 s interval:
    filesystem routes answer 200 again within 5 s of the fix, and the scheduler's
    routes are never refused meanwhile."""
    own = Path(tempfile.mkdtemp(prefix="hpcgate-health-"))
    os.chmod(own, 0o755)
    probed = own / "fs"
    probed.mkdir(mode=0o755)
    home = site_env.home("hpcuser1")
    server = start_server(
        site_env,
        tmp_path,
        overrides={
            "filesystems": [
                {
                    "path": site_env["HPC_SITE_HOME_ROOT"],
                    "data_type": "users",
                    "default_work_dir": True,
                },
                {"path": str(probed), "data_type": "scratch"},
            ]
        },
        settings_overrides={
            "health": {"interval_seconds": 30, "timeout_seconds": 10, "retry_seconds": 0.5}
        },
    )
    system = server.system
    try:
        with server.client() as client:

            def ls() -> httpx.Response:
                return client.get(f"/filesystem/{system}/ops/ls", params={"path": home})

            assert ls().status_code == 200
            # as in the field: a 3 s fault that overlaps one periodic round
            [seen] = client.get("/status/systems").json()["systems"]
            [checked] = [h for h in seen["servicesHealth"] if h.get("path") == str(probed)]
            last = datetime.fromisoformat(checked["lastChecked"]).timestamp()
            time.sleep(max(0.0, last + 30 - 1 - time.time()))
            probed.rename(own / "fs.away")
            broken_at = time.monotonic()
            refused = None
            while time.monotonic() - broken_at < 3:
                response = ls()
                if response.status_code == 503:
                    refused = response
                assert client.get(f"/status/{system}/partitions").status_code == 200
                time.sleep(0.1)
            assert refused is not None, "the fault was never seen"
            assert 1 <= int(refused.headers["retry-after"]) <= 30
            assert "remote" not in refused.text
            (own / "fs.away").rename(probed)
            fixed_at = time.monotonic()
            while (response := ls()).status_code != 200:
                assert response.status_code == 503, response.text
                assert time.monotonic() - fixed_at < 5, "still refused 5 s after the fix"
                time.sleep(0.05)
            recovery = time.monotonic() - fixed_at
            print(f"filesystem routes answered 200 again {recovery:.2f} s after the fix")
            assert recovery < 5
    finally:
        server.stop()
        shutil.rmtree(own, ignore_errors=True)
