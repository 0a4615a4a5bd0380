"""A dedicated server for the event tests: service-user watcher, fast rounds, faults."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest

from tests.server import ApiServer, start_server
from tests.site import SiteEnv

MIN_INTERVAL = 1.0
FAULT_PREFIX = "fault-"
FAULT_DELAY = 2.0

WATCHER = {
    "user": "hpcuser1",  # no PrivateData here: hpcuser1 sees every user's jobs
    "min_interval": MIN_INTERVAL,
    "max_interval": 5.0,
    "heartbeat_seconds": 1.0,
    "interest_seconds": 10.0,
}
IDEMPOTENCY = {
    "fault_delay_before_record": FAULT_DELAY,
    "fault_delay_before_response": FAULT_DELAY,
    "fault_key_prefix": FAULT_PREFIX,
}


def events_config() -> dict[str, object]:
    return {
        "overrides": {"watcher": WATCHER},
        "settings_overrides": {"idempotency": IDEMPOTENCY, "health": {"interval_seconds": 3600}},
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
