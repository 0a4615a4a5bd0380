"""A dedicated server for the event tests: service-user watcher, fast rounds, faults
(served by ``tests.faults``: keys starting with ``FAULT_PREFIX`` stall ``FAULT_DELAY``
seconds before their job is recorded and before the answer)."""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults import FAULT_DELAY, FAULT_PREFIX
from tests.server import ApiServer, free_port, start_server
from tests.site import SiteEnv

__all__ = ["FAULTS", "FAULT_DELAY", "FAULT_PREFIX", "events_config", "remote"]

MIN_INTERVAL = 1.0
FAULTS = "tests.faults"
"""The launcher that serves the application with the faults (``start_server``)."""

WATCHER = {
    "min_interval": MIN_INTERVAL,
    "max_interval": 5.0,
    "heartbeat_seconds": 1.0,
    "interest_seconds": 10.0,
    # test_load has 1,000 waiters of one user share the watcher; the per-user budget
    # itself is tested on private servers (tests/security/test_event_trust.py)
    "max_subscribers_per_user": 2000,
}


def events_config() -> dict[str, Any]:
    return {
        "overrides": {"watcher": WATCHER},
        "settings_overrides": {"health": {"interval_seconds": 3600}},
        "launcher": FAULTS,
    }


@pytest.fixture(scope="session")
def events_server(
    site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """The server the event tests share (its metrics are theirs alone)."""
    server = start_server(site_env, tmp_path_factory.mktemp("events"), **events_config())
    yield server
    server.stop()


async def remote(ssh_as, user: str, *argv: str) -> str:
    """Run ``argv`` on the site as ``user``; its stdout."""
    conn = await ssh_as(user)
    return str((await conn.run(shlex.join(argv), check=True)).stdout)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server (no persistence) for the session; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/test installs it)")
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    argv += ["no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not _pong(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log = workdir / "redis.log"
            pytest.fail(f"redis-server did not start:\n{log.read_text() if log.exists() else ''}")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
