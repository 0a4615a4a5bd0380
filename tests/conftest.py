"""Session fixtures: the real local site and SSH connections to it as each user."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncssh
import pytest

from tests.server import ApiServer, start_server
from tests.site import SiteEnv, ensure_site_up


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
