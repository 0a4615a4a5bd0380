"""The per-user cap on open streamed transfers (``filesystem.sftp.quota``), with a fake
SFTP session: a user over the cap gets 429 before any SFTP session is opened, other
users keep theirs, and a slot comes back however a stream ends."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncssh
import pytest

from hpcgate.cluster.remote import CommandResult
from hpcgate.config import FilesystemLimits, SystemSettings
from hpcgate.errors import Conflict, TooManyRequests
from hpcgate.filesystem import staging
from hpcgate.filesystem.sftp import SftpFilesystem, SystemState
from hpcgate.filesystem.sftp.quota import StreamQuota

SIZE = 100_000
REGULAR = asyncssh.FILEXFER_TYPE_REGULAR


def _attrs(**extra: Any) -> asyncssh.SFTPAttrs:
    mode = 0o100000 | staging.STAGED_MODE
    return asyncssh.SFTPAttrs(type=REGULAR, permissions=mode, size=SIZE, **extra)


class FakeHandle:
    def __init__(self, sftp: FakeSftp) -> None:
        self._sftp = sftp

    async def stat(self) -> asyncssh.SFTPAttrs:
        return _attrs(uid=1, gid=1)

    async def read(self, size: int, offset: int) -> bytes:
        await self._sftp.gate.wait()
        return b"x" * max(0, min(size, SIZE - offset))

    async def write(self, data: bytes, offset: int) -> None:
        await self._sftp.gate.wait()

    async def close(self) -> None:
        self._sftp.closed += 1


class FakeSftp:
    """Opens ``SIZE``-byte regular files; ``gate`` holds reads, writes and (with
    ``hold_open``) opens; ``error`` fails every open."""

    limits = asyncssh.sftp.SFTPLimits(0, 32 * 1024, 32 * 1024, 0)

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.hold_open = False
        self.error: Exception | None = None
        self.closed = 0

    async def stat(self, path: str) -> asyncssh.SFTPAttrs:
        return _attrs()

    async def open(self, path: str, *args: Any, **kwargs: Any) -> FakeHandle:
        if self.hold_open:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return FakeHandle(self)


class FakePool:
    def __init__(self, sftp: FakeSftp) -> None:
        self._sftp = sftp
        self.sessions: Counter[str] = Counter()

    @asynccontextmanager
    async def sftp(self, system: str, username: str) -> AsyncIterator[Any]:
        self.sessions[username] += 1
        yield self._sftp


class NoRunner:
    async def run(self, argv: Any, *, stdin: Any = None, timeout: Any = None) -> CommandResult:
        raise AssertionError("no command expected")


SYSTEM = SystemSettings(
    name="fake",
    ssh={"host": "h", "known_hosts": "/dev/null", "command_timeout": 5},
    credentials={"kind": "static_keys", "key_path": "/k/{username}"},
    filesystems=[{"path": "/home"}],
    filesystem_limits={"max_streams_per_user": 2},
)
STAGED = staging.Staged(
    directory="/home/u/.stage", secret="s", uid=1, gid=1, size=None, default_mode=0o644
)


class Site:
    """One system's shared state and fake session, filesystems per user."""

    def __init__(self) -> None:
        self.sftp = FakeSftp()
        self.pool = FakePool(self.sftp)
        self.state = SystemState(SYSTEM)

    def fs(self, user: str = "u") -> SftpFilesystem:
        return SftpFilesystem(self.pool, SYSTEM, user, NoRunner(), state=self.state)  # type: ignore[arg-type]

    def held(self, user: str = "u") -> int:
        return self.state.streams.held(user)


async def _chunks(count: int, *, then: BaseException | None = None) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"y" * 1000
    if then is not None:
        raise then


def test_setting_bounds() -> None:
    assert FilesystemLimits().max_streams_per_user == 16
    for wrong in (0, 1025):
        with pytest.raises(ValueError, match="max_streams_per_user"):
            FilesystemLimits(max_streams_per_user=wrong)


def test_quota_counts_per_user_and_forgets_idle_users() -> None:
    quota = StreamQuota(1)
    with quota.hold("a"), quota.hold("b"):
        with pytest.raises(TooManyRequests) as caught, quota.hold("a"):
            pass
        assert "filesystem_limits.max_streams_per_user" in caught.value.message
        assert caught.value.status_code == 429
        assert (quota.held("a"), quota.held("b")) == (1, 1)
    assert quota._open == {}  # bounded by the streams open, not by the users ever seen


async def test_cap_plus_one_read_is_429_before_any_session() -> None:
    site = Site()
    first, second = await site.fs().open_read("/home/u/f"), await site.fs().open_read("/home/u/f")
    with pytest.raises(TooManyRequests):
        await site.fs().open_read("/home/u/f")
    assert site.pool.sessions["u"] == 2  # the refused one never reached the cluster
    other = await site.fs("v").open_read("/home/u/f")  # another user is not affected
    await other.aclose()
    assert site.held("v") == 0
    await first.aclose()
    third = await site.fs().open_read("/home/u/f")  # the closed one's slot is back
    for stream in (second, third):
        await stream.aclose()
        await stream.aclose()  # idempotent: a slot is given back once
    assert site.held() == 0


async def test_stream_never_iterated_releases_on_close() -> None:
    site = Site()
    stream = await site.fs().open_read("/home/u/f")
    body = stream.__aiter__()  # what the routes hand to the response, never started
    assert site.held() == 1
    await body.aclose()  # type: ignore[attr-defined]
    await stream.aclose()
    assert (site.held(), site.sftp.closed) == (0, 1)


async def test_stream_dropped_without_close_releases_when_collected() -> None:
    site = Site()
    stream = await site.fs().open_read("/home/u/f")
    assert site.held() == 1
    del stream
    gc.collect()
    assert site.held() == 0


async def test_read_to_the_end_releases() -> None:
    site = Site()
    stream = await site.fs().open_read("/home/u/f")
    assert len(b"".join([block async for block in stream])) == SIZE
    assert site.held() == 0


async def test_read_released_on_open_error_and_cancellation() -> None:
    site = Site()
    site.sftp.error = asyncssh.SFTPPermissionDenied("denied")
    for _ in range(3):
        with pytest.raises(Exception, match="Permission denied"):
            await site.fs().open_read("/home/u/f")
    assert site.held() == 0
    site.sftp.error, site.sftp.hold_open = None, True
    opening = asyncio.create_task(site.fs().open_read("/home/u/f"))
    await asyncio.sleep(0.01)
    assert site.held() == 1
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert site.held() == 0


async def test_read_released_when_the_client_goes_mid_stream() -> None:
    site = Site()
    stream = await site.fs().open_read("/home/u/f")
    site.sftp.gate.clear()  # the cluster stalls; the client gives up

    async def consume() -> None:
        async for _ in stream:
            pass

    reading = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert site.held() == 0


async def test_writes_share_the_cap_and_release_on_every_exit() -> None:
    site = Site()
    written = await site.fs().write_staged(STAGED, _chunks(3), offset=0, max_size=SIZE)
    assert (written, site.held()) == (3000, 0)

    with pytest.raises(ValueError, match="client gone"):  # the body fails mid-upload
        await site.fs().write_staged(
            STAGED, _chunks(2, then=ValueError("client gone")), offset=0, max_size=SIZE
        )
    assert site.held() == 0

    site.sftp.error = asyncssh.SFTPFailure("gone")  # the staged file cannot be reopened
    with pytest.raises(Conflict):
        await site.fs().write_staged(STAGED, _chunks(1), offset=0, max_size=SIZE)
    assert site.held() == 0
    site.sftp.error = None

    site.sftp.gate.clear()  # an upload trickling: two writes held open
    uploads = [
        asyncio.create_task(site.fs().write_staged(STAGED, _chunks(5), offset=0, max_size=SIZE))
        for _ in range(2)
    ]
    await asyncio.sleep(0.01)
    assert site.held() == 2
    with pytest.raises(TooManyRequests):  # a read counts against the same cap
        await site.fs().open_read("/home/u/f")
    with pytest.raises(TooManyRequests):
        await site.fs().write_staged(STAGED, _chunks(1), offset=0, max_size=SIZE)
    assert site.pool.sessions["u"] == 5  # 3 above, 2 held: the refused ones opened nothing
    other = await site.fs("v").write_staged(STAGED, _chunks(0), offset=0, max_size=SIZE)
    assert other == 0
    for task in uploads:  # the clients go away
        task.cancel()
    await asyncio.gather(*uploads, return_exceptions=True)
    assert site.held() == 0
