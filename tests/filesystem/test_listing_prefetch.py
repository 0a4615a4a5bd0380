"""ops/ls reads a directory while its lstat is in flight: the answer is still the lstat's.

The read is used only when the lstat says the path is a directory; a symlink to a
directory is described (or followed with ``dereference``), a directory that cannot
be read still answers as before, and a read left unused stops and closes its handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pwd
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from hpcgate.errors import RequestTimeout
from hpcgate.filesystem.sftp import SftpFilesystem
from hpcgate.filesystem.sftp.listing import _retrieved
from tests.filesystem.conftest import FsServer, running_server
from tests.filesystem.test_sftp_errors import SYSTEM, FailingRunner, FakePool
from tests.site import SiteEnv

MAX_ENTRIES = 5


@pytest.fixture(scope="module")
def small(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsServer]:
    """A server that lists at most ``MAX_ENTRIES`` entries."""
    limits = {"filesystem_limits": {"max_listing_entries": MAX_ENTRIES}}
    with running_server(site_env, tmp_path_factory.mktemp("ls-keys"), **limits) as server:
        yield server


def _ls(client: httpx.Client, path: str, **params: str) -> httpx.Response:
    return client.get("/ls", params={"path": path, **params})


@pytest.mark.site
async def test_a_link_to_a_directory_is_described_unless_followed(
    small: FsServer, workdir: dict[str, str], sftp_as: Any
) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    await sftp.mkdir(f"{base}/wide")
    for i in range(MAX_ENTRIES + 1):
        async with sftp.open(f"{base}/wide/e{i}", "wb"):
            pass
    await sftp.mkdir(f"{base}/narrow")
    async with sftp.open(f"{base}/narrow/only", "wb"):
        pass
    await sftp.symlink("wide", f"{base}/to-wide")
    await sftp.symlink("narrow", f"{base}/to-narrow")
    with small.client("hpcuser1") as client:
        # the link itself, though the directory it names has too many entries to list
        for link, target in (("to-wide", "wide"), ("to-narrow", "narrow")):
            response = _ls(client, f"{base}/{link}")
            assert response.status_code == 200, response.text
            [entry] = response.json()["output"]
            assert (entry["name"], entry["type"], entry["linkTarget"]) == (
                f"{base}/{link}",
                "l",
                target,
            )
        followed = _ls(client, f"{base}/to-narrow", dereference="true")
        assert [f["name"] for f in followed.json()["output"]] == ["only"]
        for path, params in ((f"{base}/to-wide", {"dereference": "true"}), (f"{base}/wide", {})):
            response = _ls(client, path, **params)
            assert response.status_code == 400, response.text
            assert f"max_listing_entries ({MAX_ENTRIES})" in response.text


@pytest.mark.site
async def test_an_unreadable_directory_and_a_file(
    small: FsServer, workdir: dict[str, str], sftp_as: Any
) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    await sftp.mkdir(f"{base}/closed")
    await sftp.chmod(f"{base}/closed", 0o000)
    async with sftp.open(f"{base}/plain", "wb") as handle:
        await handle.write(b"abc")
    try:
        with small.client("hpcuser1") as client:
            assert _ls(client, f"{base}/closed").status_code == 403
            response = _ls(client, f"{base}/plain")
            assert [(f["name"], f["size"]) for f in response.json()["output"]] == [
                (f"{base}/plain", "3")
            ]
            assert _ls(client, f"{base}/missing").status_code == 404
    finally:
        await sftp.chmod(f"{base}/closed", 0o700)


def _sftp_descriptors(user: str, ssh_port: int) -> int:
    """Open file descriptors of ``user``'s sshd session processes (their internal SFTP
    servers) at the far end of this process's SSH connections: the server under test
    runs in this process; other test workers' sessions are left out."""
    rows = []
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    for line in listing.splitlines():
        fields = line.split()
        local, peer = (int(address.rsplit(":", 1)[1]) for address in fields[2:4])
        rows.append((local, peer, {int(pid) for pid in re.findall(r"pid=(\d+)", line)}))
    ours = {local for local, peer, pids in rows if peer == ssh_port and os.getpid() in pids}
    sessions = {
        pid for local, peer, pids in rows if local == ssh_port and peer in ours for pid in pids
    }
    uid = pwd.getpwnam(user).pw_uid
    total = 0
    for pid in sessions:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}").stat().st_uid == uid:
                total += len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return total


@pytest.mark.site
async def test_an_unused_read_closes_its_directory_handle(
    small: FsServer, workdir: dict[str, str], sftp_as: Any, site_env: SiteEnv
) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    await sftp.mkdir(f"{base}/d")
    await sftp.symlink("d", f"{base}/link")
    async with sftp.open(f"{base}/f", "wb"):
        pass
    with small.client("hpcuser1") as client:
        assert _ls(client, base).status_code == 200  # the session is open
        before = _sftp_descriptors("hpcuser1", site_env.ssh_port)
        for _ in range(20):
            for path in (f"{base}/link", f"{base}/f", f"{base}/missing"):
                assert _ls(client, path).status_code in (200, 404)
        assert before > 0  # the server's session is seen
        assert _sftp_descriptors("hpcuser1", site_env.ssh_port) - before < 5


async def test_an_unused_reads_error_is_retrieved() -> None:
    lost: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: lost.append(context))

    async def failing() -> list[Any]:
        raise PermissionError("denied")

    retrieved = asyncio.ensure_future(failing())
    retrieved.add_done_callback(_retrieved)
    unretrieved = asyncio.ensure_future(failing())  # the control: it is reported
    await asyncio.wait([retrieved, unretrieved])
    del retrieved
    gc.collect()
    assert lost == []
    del unretrieved
    gc.collect()
    assert [str(context["exception"]) for context in lost] == ["denied"]


class SilentSftp:
    """An SFTP server that answers an lstat (or not) and never a directory read."""

    def __init__(self, answers_lstat: bool) -> None:
        self.answers_lstat = answers_lstat
        self.reads: list[asyncio.Task[Any] | None] = []

    async def lstat(self, path: str) -> asyncssh.SFTPAttrs:
        if not self.answers_lstat:
            await asyncio.sleep(3600)
        return asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_REGULAR, permissions=0o100644)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        self.reads.append(asyncio.current_task())
        await asyncio.sleep(3600)
        yield asyncssh.SFTPName(b"never")


@pytest.mark.parametrize("answers_lstat", [False, True])
async def test_an_unanswered_read_still_times_out(answers_lstat: bool) -> None:
    sftp = SilentSftp(answers_lstat)
    fs = SftpFilesystem(FakePool(sftp), SYSTEM, "u", FailingRunner(""))  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    with pytest.raises(RequestTimeout):
        async with asyncio.timeout(5):  # a failure, not a hang, if it never ends
            await fs.ls("/home/u/x")
    assert asyncio.get_running_loop().time() - started < 1  # command_timeout 0.05 s
    [read] = sftp.reads
    assert read is not None
    await asyncio.wait([read], timeout=1)
    assert read.cancelled()  # abandoned with the operation, as any SFTP call
