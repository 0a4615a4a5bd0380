"""One pooled SSH connection: its channel budget, leases, output budget and SFTP session.

What the pool (``hpcgate.cluster.sshpool``) and command execution
(``hpcgate.cluster.commands``) share: which failures mean the connection is gone, and
the error a caller sees then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

import asyncssh
from asyncssh.constants import OPEN_CONNECT_FAILED

from hpcgate import errors
from hpcgate.cluster.credentials import (
    SshIdentity,
)
from hpcgate.cluster.output import OutputBudget
from hpcgate.config import SystemSettings

LOST = (
    asyncssh.ConnectionLost,
    asyncssh.DisconnectError,
    asyncssh.SFTPConnectionLost,
    BrokenPipeError,
    ConnectionResetError,
)
#: how long a closing connection or process gets to finish
CLOSE_GRACE_SECONDS = 5.0


class ChannelNotOpened(Exception):
    """The connection was dead when a channel was opened: nothing ran remotely."""


def unreachable(system: SystemSettings, reason: str) -> errors.ClusterUnreachable:
    return errors.ClusterUnreachable(f"Cannot reach system {system.name} over SSH: {reason}")


class Client(asyncssh.SSHClient):
    """Tells the pool when its connection goes away."""

    def __init__(self, on_lost: Callable[[Exception | None], None]) -> None:
        super().__init__()
        self._on_lost = on_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


class Connection:
    """One pooled connection: its channel budget, leases and SFTP session."""

    def __init__(self, system: SystemSettings, username: str, identity: SshIdentity) -> None:
        self.system = system
        self.username = username
        self.identity = identity
        self.conn: asyncssh.SSHClientConnection | None = None
        self.closed = False
        self.leases = 0
        self.channels_in_use = 0
        self.last_used = asyncio.get_running_loop().time()
        self._channels = asyncio.Semaphore(system.ssh.max_channels_per_connection)
        self.output_budget = OutputBudget(system.ssh.max_output_bytes_per_user)
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_lock = asyncio.Lock()

    @property
    def usable(self) -> bool:
        return not self.closed and self.conn is not None and not self.conn.is_closed()

    @property
    def has_sftp(self) -> bool:
        return self._sftp is not None

    async def acquire_channel(self) -> None:
        await self._channels.acquire()
        self.channels_in_use += 1

    def release_channel(self) -> None:
        self.channels_in_use -= 1
        self._channels.release()

    def dead_at_open(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised while opening a channel, means the connection died."""
        if isinstance(exc, LOST) or not self.usable:
            return True
        return isinstance(exc, asyncssh.ChannelOpenError) and exc.code == OPEN_CONNECT_FAILED

    async def sftp(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> asyncssh.SFTPClient:
        """The connection's SFTP session, opened on first use."""
        if self._sftp is not None:
            return self._sftp
        async with self._sftp_lock:
            if self._sftp is None:
                assert self.conn is not None
                try:
                    client = await self.conn.start_sftp_client()
                except (asyncssh.ChannelOpenError, *LOST) as exc:
                    if self.dead_at_open(exc):
                        raise ChannelNotOpened(str(exc)) from exc
                    raise
                self._sftp = client
                spawn(self._forget_sftp_when_closed(client))
            return self._sftp

    async def _forget_sftp_when_closed(self, client: asyncssh.SFTPClient) -> None:
        with suppress(Exception):
            await client.wait_closed()
        if self._sftp is client:
            self._sftp = None

    def close(self) -> None:
        self.closed = True
        self._sftp = None
        if self.conn is not None:
            self.conn.close()
