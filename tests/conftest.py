"""Session fixtures: the real local site and SSH connections to it as each user.

Every test whose fixtures reach ``site_env`` (directly or through ``ssh_as``,
``sftp_as``, ``api_server`` or any fixture built on them) or Airflow's metadata database
(``migrated_airflow_db``: whole DAG runs in Airflow processes) is marked ``site`` at
collection, so ``pytest -m "not site"`` is the fast layer: no site, no server process,
no Airflow run. ``HPCGATE_TEST_NO_SITE=1`` makes any use of the site fail loudly (to
prove that layer needs none).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncssh
import pytest

import tests.site
from tests.access_log import AccessLines, captured
from tests.async_deadline import pytest_runtest_call, pytest_timeout_set_timer  # noqa: F401  (hooks)
from tests.private_site import private_server, private_site  # noqa: F401  (fixtures)
from tests.server import ApiServer, start_server
from tests.site import SiteEnv, ensure_site_up

# the fixtures every site (or full-stack) fixture is built on
SITE_FIXTURES = frozenset({"site_env", "migrated_airflow_db"})
# deploy/local/site's ports and their defaults
SITE_PORTS = (("SSH", 2222), ("CTLD", 6817), ("SLURMD", 6818), ("DBD", 6819), ("DB", 3307))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``site`` every test whose fixture closure needs the site (explicit marks stay)."""
    for item in items:
        closure = getattr(item, "fixturenames", ())
        if not SITE_FIXTURES.isdisjoint(closure) and not item.get_closest_marker("site"):
            item.add_marker(pytest.mark.site)


def pytest_configure(config: pytest.Config) -> None:
    """With ``HPCGATE_TEST_NO_SITE`` set, running ``deploy/local/site`` or connecting to
    the site's ports (sshd, Slurm, its database) raises instead."""
    if not os.environ.get("HPCGATE_TEST_NO_SITE"):
        return

    def no_site(*args: str, **kwargs: Any) -> Any:
        raise RuntimeError(f"HPCGATE_TEST_NO_SITE is set, yet a test ran the site {args}")

    tests.site.site = no_site
    ports = {int(os.environ.get(f"HPC_SITE_{name}_PORT", default)) for name, default in SITE_PORTS}
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[1] in ports:
            raise RuntimeError(f"HPCGATE_TEST_NO_SITE is set, yet a test connects to {address}")
        connect(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign,assignment]


@pytest.fixture(scope="session")
def site_env() -> SiteEnv:
    """The running local site (brought up on first use)."""
    return ensure_site_up()


SshConnect = Callable[[str], Awaitable[asyncssh.SSHClientConnection]]


@pytest.fixture(scope="session")
async def ssh_as(site_env: SiteEnv) -> AsyncIterator[SshConnect]:
    """Open (and cache) one asyncssh connection per user with the user's site key."""
    connections: dict[str, asyncssh.SSHClientConnection] = {}

    async def connect(user: str) -> asyncssh.SSHClientConnection:
        if user not in connections:
            connections[user] = await asyncssh.connect(
                site_env.ssh_host,
                port=site_env.ssh_port,
                username=user,
                client_keys=[str(site_env.key(user))],
                known_hosts=str(site_env.known_hosts),
            )
        return connections[user]

    yield connect
    for connection in connections.values():
        connection.close()
        await connection.wait_closed()


@pytest.fixture(scope="session")
def api_server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One `hpcgate serve` process for the whole session, serving the local site."""
    server = start_server(site_env, tmp_path_factory.mktemp("hpcgate"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def sftp_as(ssh_as: SshConnect) -> AsyncIterator[Any]:
    """A direct SFTP client per user (for setting up and checking files)."""
    clients: dict[str, asyncssh.SFTPClient] = {}

    async def get(user: str) -> asyncssh.SFTPClient:
        if user not in clients:
            clients[user] = await (await ssh_as(user)).start_sftp_client()
        return clients[user]

    yield get
    for client in clients.values():
        client.exit()


@pytest.fixture
def access() -> Iterator[AccessLines]:
    """The access log records the server writes during the test."""
    with captured() as lines:
        yield lines
