"""The base of the SFTP filesystem: one user's session, timeouts, checks, stat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncssh

from hpcgate.cluster.remote import CommandResult, CommandRunner
from hpcgate.cluster.sshpool import SshPool
from hpcgate.config import FilesystemLimits, SystemSettings
from hpcgate.errors import (
    RequestTimeout,
)
from hpcgate.filesystem.base import Filesystem
from hpcgate.filesystem.sftp.state import SystemState
from hpcgate.filesystem.sftp_errors import command_error, sftp_errors

# (name shown in the listing, full path as the cluster spells it, lstat attrs, longname)
Row = tuple[str, bytes, asyncssh.SFTPAttrs, str | None]


class SftpSession(Filesystem):
    """What every SFTP operation stands on: one user's session on one system.

    ``state`` is the system's shared ``SystemState`` (``Services`` keeps one per
    system); without it the filesystem gets a fresh one of its own (tests).
    ``limits`` replaces the system's ``filesystem_limits`` (transfers lift the
    direct-transfer cap).
    """

    def __init__(
        self,
        pool: SshPool,
        system: SystemSettings,
        username: str,
        runner: CommandRunner,
        *,
        state: SystemState | None = None,
        limits: FilesystemLimits | None = None,
    ) -> None:
        self._pool = pool
        self._system = system
        self._username = username
        self._runner = runner
        state = state or SystemState(system)
        self.policy = state.policy
        self._guard = state.guard
        self._names = state.names(username)
        self._streams = state.streams
        self.limits = limits or system.filesystem_limits
        self._timeout = system.ssh.command_timeout

    # -- plumbing -----------------------------------------------------------------

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[asyncssh.SFTPClient]:
        """The user's SFTP session, for one operation under the operation timeout."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._pool.sftp(self._system.name, self._username) as sftp:
                    yield sftp
        except TimeoutError:
            raise RequestTimeout(
                f"The filesystem operation did not finish within {self._timeout:g} s"
            ) from None

    async def _run(self, argv: Sequence[str], *, stdin: str | None = None) -> CommandResult:
        result = await self._runner.run(argv, stdin=stdin)
        if not result.ok:
            raise command_error(result, argv[0])
        return result

    def _check(self, path: str, what: str = "path") -> str:
        return self.policy.check(path, what=what)

    async def _lstat(self, sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPAttrs:
        with sftp_errors(path):
            return await sftp.lstat(path)

    async def _stat(self, sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPAttrs:
        with sftp_errors(path):
            return await sftp.stat(path)

    async def _exists(self, sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPAttrs | None:
        try:
            return await sftp.lstat(path)
        except asyncssh.SFTPNoSuchFile:
            return None

    async def _guard_write(
        self, sftp: asyncssh.SFTPClient, path: str, *, follow_final: bool
    ) -> None:
        with sftp_errors(path):
            await self._guard.check(sftp, path, follow_final=follow_final)
