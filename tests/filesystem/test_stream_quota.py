"""The per-user cap on open streamed transfers, on the real site, as an attacker
would use it: downloads opened and never read hold their slots, the next one is 429,
another user is still served, and the slots come back when the connections close."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.filesystem.conftest import FsServer, running_server
from tests.site import SiteEnv

pytestmark = pytest.mark.site

CAP = 2
# far more than the socket buffers and the stream's window: a download nobody reads
# stays open, its slot held, for as long as its connection lives
BIG = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def capped(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsServer]:
    """A server that lets a user hold ``CAP`` streamed transfers at once."""
    limits = {"filesystem_limits": {"max_streams_per_user": CAP}}
    with running_server(site_env, tmp_path_factory.mktemp("stream-keys"), **limits) as server:
        yield server


async def _big_file(sftp: Any, path: str) -> None:
    async with sftp.open(path, "wb") as handle:
        await handle.truncate(BIG)  # sparse: reads back as zeros, costs no disk


def _download(client: httpx.Client, path: str) -> httpx.Response:
    return client.get("/download", params={"path": path})


async def test_idle_downloads_hold_their_slots_until_their_connections_close(
    capped: FsServer, workdir: dict[str, str], sftp_as: Any
) -> None:
    base, other = workdir["hpcuser1"], workdir["hpcuser2"]
    await _big_file(await sftp_as("hpcuser1"), f"{base}/big.bin")
    async with (await sftp_as("hpcuser2")).open(f"{other}/small.bin", "wb") as handle:
        await handle.write(b"other user's bytes")

    with contextlib.ExitStack() as held:
        for _ in range(CAP):  # opened, headers read, body never read
            client = held.enter_context(capped.client("hpcuser1"))
            response = held.enter_context(
                client.stream("GET", "/download", params={"path": f"{base}/big.bin"})
            )
            assert response.status_code == 200
            assert response.headers["content-length"] == str(BIG)

        with capped.client("hpcuser1") as client:
            before = capped.calls("hpcuser1")
            refused = _download(client, f"{base}/big.bin")
            assert refused.status_code == 429, refused.text
            assert capped.calls("hpcuser1") == before  # refused before any SFTP session
            assert "filesystem_limits.max_streams_per_user" in refused.json()["message"]
            assert refused.headers["retry-after"]
            # an upload counts against the same cap (and is refused before it is written)
            upload = client.post(
                "/upload", params={"path": base}, files={"file": ("up.bin", b"data")}
            )
            assert upload.status_code == 429, upload.text
        with capped.client("hpcuser2") as client:  # another user is served meanwhile
            served = _download(client, f"{other}/small.bin")
            assert served.status_code == 200, served.text
            assert served.content == b"other user's bytes"
    # both connections closed mid-body: the server notices and gives the slots back
    with capped.client("hpcuser1") as client:
        deadline = time.monotonic() + 15
        while True:
            with client.stream("GET", "/download", params={"path": f"{base}/big.bin"}) as again:
                if again.status_code == 200 or time.monotonic() > deadline:
                    break
            time.sleep(0.1)
        assert again.status_code == 200
