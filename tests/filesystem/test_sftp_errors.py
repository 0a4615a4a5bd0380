"""Error mapping and timeouts of the SFTP filesystem, with a fake pool (no cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncssh
import pytest

from hpcgate.cluster.remote import CommandResult
from hpcgate.config import SystemSettings
from hpcgate.errors import BadRequest, Forbidden, NotFound, RequestTimeout
from hpcgate.filesystem.sftp import SftpFilesystem


class FakeSftp:
    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.error, self.delay = error, delay

    async def lstat(self, path: str) -> asyncssh.SFTPAttrs:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_REGULAR, permissions=0o100644)


class FakePool:
    def __init__(self, sftp: FakeSftp) -> None:
        self._sftp = sftp

    @asynccontextmanager
    async def sftp(self, system: str, username: str) -> AsyncIterator[Any]:
        yield self._sftp


class FailingRunner:
    def __init__(self, stderr: str) -> None:
        self.stderr = stderr

    async def run(self, argv: Any, *, stdin: Any = None, timeout: Any = None) -> CommandResult:
        return CommandResult(exit_status=1, stdout="", stderr=self.stderr)


SYSTEM = SystemSettings(
    name="fake",
    ssh={"host": "h", "known_hosts": "/dev/null", "command_timeout": 0.05},
    credentials={"kind": "static_keys", "key_path": "/k/{username}"},
    filesystems=[{"path": "/home"}],
)


def filesystem(sftp: FakeSftp, stderr: str = "") -> SftpFilesystem:
    return SftpFilesystem(FakePool(sftp), SYSTEM, "u", FailingRunner(stderr))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "expected", "text"),
    [
        (asyncssh.SFTPNoSuchFile("No such file"), NotFound, "No such file or directory"),
        (asyncssh.SFTPPermissionDenied("Permission denied"), Forbidden, "Permission denied"),
        (asyncssh.SFTPFailure("Failure"), BadRequest, "operation failed"),
        (asyncssh.SFTPOpUnsupported("nope"), BadRequest, "Not supported"),
    ],
)
async def test_sftp_errors_map_to_api_errors(error, expected, text) -> None:
    with pytest.raises(expected) as caught:
        await filesystem(FakeSftp(error)).stat("/home/u/x")
    assert text in caught.value.message


async def test_slow_operations_are_408() -> None:
    with pytest.raises(RequestTimeout):
        await filesystem(FakeSftp(delay=1.0)).stat("/home/u/x")


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        ("file: cannot open `x' (No such file or directory)", NotFound),
        ("tar: x: Cannot open: Permission denied", Forbidden),
        ("tar: This does not look like a tar archive", BadRequest),
    ],
)
async def test_failed_commands_map_to_api_errors(stderr, expected) -> None:
    with pytest.raises(expected) as caught:
        await filesystem(FakeSftp(), stderr).file_type("/home/u/x")
    assert caught.value.message == stderr
