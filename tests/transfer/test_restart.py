"""Transfers survive a SIGKILL of the server: real `hpcgate serve` processes, restarted
on the same state directory, on the local site.

Each test prints its measured figures (``RESTART ...`` lines: bytes resent, time to
resume); run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncssh
import httpx
import pytest
from firecrest.utilities import part_checksum_xml

from hpcgate.filesystem.staging import PREFIX
from hpcgate.transfer.signing import KEY_FILE
from tests.server import ApiServer, start_server
from tests.site import SiteEnv
from tests.transfer.conftest import wait_for_job

pytestmark = [pytest.mark.site, pytest.mark.e2e]

TUS = {"Tus-Resumable": "1.0.0"}
MIB = 1024 * 1024
PART = 4 * MIB


def _settings(**transfer: Any) -> dict[str, Any]:
    return {
        "health": {"interval_seconds": 3600},
        "transfer": {"part_size": PART, "job_poll_seconds": 0.2, **transfer},
    }


@pytest.fixture
def servers() -> Iterator[list[ApiServer]]:
    """Servers a test started; stopped (or killed) at its end."""
    started: list[ApiServer] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.stop()


def _start(
    servers: list[ApiServer],
    site_env: SiteEnv,
    workdir: Path,
    launcher: str = "hpcgate.cli",
    **transfer: Any,
) -> ApiServer:
    server = start_server(
        site_env, workdir, settings_overrides=_settings(**transfer), launcher=launcher
    )
    servers.append(server)
    return server


def _client(server: ApiServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=server.headers(), timeout=90)


def _kill(server: ApiServer) -> None:
    server.process.kill()  # SIGKILL: no shutdown of any kind
    server.process.wait()


def _rebase(url: str, base: str) -> str:
    """``url`` on another server (the restarted one listens on another port)."""
    return urlunsplit(urlsplit(url)._replace(netloc=urlsplit(base).netloc))


def _metadata(path: str, digest: bytes) -> str:
    encoded = base64.b64encode(path.encode()).decode()
    return f"path {encoded},sha256 {base64.b64encode(digest).decode()}"


def _patch_headers(offset: int) -> dict[str, str]:
    return {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }


async def _tus_create(
    client: httpx.AsyncClient, server: ApiServer, target: str, length: int, digest: bytes
) -> str:
    headers = {**TUS, "Upload-Length": str(length), "Upload-Metadata": _metadata(target, digest)}
    created = await client.post(f"/filesystem/{server.system}/uploads", headers=headers)
    assert created.status_code == 201, created.text
    return created.headers["Location"]


async def _s3_upload(
    client: httpx.AsyncClient, server: ApiServer, target: str, size: int
) -> httpx.Response:
    directives = {"transferMethod": "s3", "fileSize": size}
    return await client.post(
        f"/filesystem/{server.system}/transfer/upload",
        json={"path": target, "transferDirectives": directives},
    )


async def _staging(sftp: asyncssh.SFTPClient, path: str) -> list[str]:
    return [name for name in await sftp.listdir(path) if name.startswith(PREFIX)]


async def _sha256(sftp: asyncssh.SFTPClient, path: str) -> bytes:
    async with sftp.open(path, "rb") as handle:
        return hashlib.sha256(await handle.read()).digest()


class Counted:
    """A slow request body that counts what it handed to the client."""

    def __init__(self, data: bytes, piece: int = 256 * 1024, pause: float = 0.05) -> None:
        self.data, self.piece, self.pause, self.sent = data, piece, pause, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.piece):
            chunk = self.data[start : start + self.piece]
            self.sent += len(chunk)
            yield chunk
            await asyncio.sleep(self.pause)


async def test_tus_upload_resumes_after_sigkill_from_the_committed_offset(
    site_env: SiteEnv, tmp_path: Path, space: dict[str, str], sftp_as: Any, servers: list[Any]
) -> None:
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    target = f"{base}/tus-killed.bin"
    data = os.urandom(32 * MIB + 5)
    digest = hashlib.sha256(data).digest()
    server = _start(servers, site_env, tmp_path)
    async with _client(server) as client:
        url = await _tus_create(client, server, target, len(data), digest)
        body = Counted(data)
        patching = asyncio.create_task(client.patch(url, headers=_patch_headers(0), content=body))
        committed = 0
        while committed < 4 * MIB:
            await asyncio.sleep(0.2)
            head = await client.head(url, headers=TUS)
            committed = int(head.headers["Upload-Offset"])
        _kill(server)
        killed_at, sent = time.monotonic(), body.sent
        with pytest.raises(httpx.HTTPError):
            await patching
    assert sent < len(data), "the upload finished before the kill"

    server = _start(servers, site_env, tmp_path)
    up_at = time.monotonic()
    url = _rebase(url, server.url)
    async with _client(server) as client:
        head = await client.head(url, headers=TUS)
        assert head.status_code == 200, head.text
        resumed_at = time.monotonic()
        offset = int(head.headers["Upload-Offset"])
        # never less than what was committed before the kill, never more than was sent
        assert committed <= offset <= sent
        response = await client.patch(url, headers=_patch_headers(offset), content=data[offset:])
        assert response.status_code == 204, response.text
        assert response.headers["Upload-Offset"] == str(len(data))
        done_at = time.monotonic()
    assert await _sha256(sftp, target) == digest
    assert await _staging(sftp, base) == []
    print(
        f"\nRESTART tus: size {len(data)}, sent before the kill {sent}, HEAD offset after "
        f"the restart {offset} (committed before the kill {committed}); bytes sent twice "
        f"{sent - offset}, tail sent after the restart {len(data) - offset}; server start "
        f"{up_at - killed_at:.2f} s, HEAD {resumed_at - up_at:.3f} s after it, "
        f"kill to done {done_at - killed_at:.2f} s"
    )


async def test_multipart_upload_completes_after_sigkill(
    site_env: SiteEnv, tmp_path: Path, space: dict[str, str], sftp_as: Any, servers: list[Any]
) -> None:
    """Parts sent before the kill stay; the signed URLs (the key made once into the
    state directory) and the completion work after the restart; the job completes."""
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    target = f"{base}/multipart-killed.bin"
    data = os.urandom(3 * PART + 123)
    parts = [data[i : i + PART] for i in range(0, len(data), PART)]
    server = _start(servers, site_env, tmp_path)
    key_file = tmp_path / "state" / KEY_FILE
    key = key_file.read_bytes()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key) == 32
    async with _client(server) as client:
        response = await _s3_upload(client, server, target, len(data))
        assert response.status_code == 201, response.text
        info = response.json()
        urls = info["transferDirectives"]["partsUploadUrls"]
        complete = info["transferDirectives"]["completeUploadUrl"]
        assert len(urls) == 4
        etags = {}
        for number in (1, 2):
            answer = await client.put(urls[number - 1], content=parts[number - 1])
            assert answer.status_code == 200, answer.text
            etags[number] = answer.headers["ETag"]
        body = Counted(parts[2], pause=0.1)
        putting = asyncio.create_task(client.put(urls[2], content=body))
        while body.sent < PART // 2:
            await asyncio.sleep(0.05)
        _kill(server)
        killed_at, cut = time.monotonic(), body.sent
        with pytest.raises(httpx.HTTPError):
            await putting

    server = _start(servers, site_env, tmp_path)
    up_at = time.monotonic()
    assert key_file.read_bytes() == key  # made once, reused
    async with _client(server) as client:
        resent = 0
        for number in (3, 4):
            answer = await client.put(
                _rebase(urls[number - 1], server.url), content=parts[number - 1]
            )
            assert answer.status_code == 200, answer.text
            etags[number] = answer.headers["ETag"]
            resent += len(parts[number - 1]) if number == 3 else 0
        body_xml = part_checksum_xml([{"PartNumber": n, "ETag": etags[n]} for n in range(1, 5)])
        answer = await client.post(_rebase(complete, server.url), content=body_xml)
        assert answer.status_code == 200, answer.text
        done_at = time.monotonic()
        job = await wait_for_job(client, server.system, info["transferJob"]["jobId"])
    assert job["status"]["state"] == "COMPLETED"
    assert await _sha256(sftp, target) == hashlib.sha256(data).digest()
    assert await _staging(sftp, base) == []
    assert key.hex() not in server.log() and key.hex() not in "".join(s.log() for s in servers)
    print(
        f"\nRESTART multipart: size {len(data)}, 4 parts of {PART}; parts 1-2 kept; part 3 cut "
        f"at {cut} bytes by the kill and resent whole: {resent} bytes resent "
        f"(of which {cut} sent twice); server start {up_at - killed_at:.2f} s, "
        f"parts 3-4 and completion {done_at - up_at:.2f} s after it"
    )


async def test_reaper_cancels_the_orphaned_job_and_removes_temporary_files(
    site_env: SiteEnv,
    tmp_path: Path,
    space: dict[str, str],
    sftp_as: Any,
    ssh_as: Any,
    servers: list[Any],
) -> None:
    """Killed mid-creation (job submitted, answer not given): after the restart the
    reaper cancels the job and removes the staging; an expired tus upload's too."""
    from tests.faults import FAULT_PREFIX

    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    server = _start(
        servers, site_env, tmp_path, "tests.faults", url_ttl_seconds=20,
        reap_interval_seconds=1,
    )  # fmt: skip
    database = tmp_path / "state" / "transfers.sqlite3"
    async with _client(server) as client:
        # a tus upload with some bytes, left to expire while the server is down
        data = os.urandom(MIB)
        expires = time.time() + 20  # no later than the upload's expiry
        location = await _tus_create(client, server, f"{base}/expired.bin", 2 * MIB, b"0" * 32)
        patched = await client.patch(location, headers=_patch_headers(0), content=data)
        assert patched.status_code == 204
        # the orphan: its creation stalls after the job was submitted and recorded
        creating = asyncio.create_task(
            _s3_upload(client, server, f"{base}/{FAULT_PREFIX}orphan.bin", 10)
        )
        job_id = ""
        deadline = time.monotonic() + 60
        while not job_id:
            assert time.monotonic() < deadline and not creating.done()
            await asyncio.sleep(0.2)
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                rows = db.execute(
                    "SELECT json_extract(data, '$.job_id') FROM transfers WHERE state = 'creating'"
                ).fetchall()
            job_id = next((row[0] for row in rows if row[0]), "")
        assert len(await _staging(sftp, base)) == 2
        _kill(server)
        with pytest.raises(httpx.HTTPError):
            await creating
    state = await _job_state(ssh_as, job_id)
    assert state in ("PENDING", "RUNNING"), state

    restarted_at = time.monotonic()
    server = _start(servers, site_env, tmp_path, url_ttl_seconds=20, reap_interval_seconds=1)
    async with _client(server) as client:
        job = await wait_for_job(client, server.system, job_id)
        cancelled_at = time.monotonic()
        assert job["status"]["state"] == "CANCELLED"
        while len(await _staging(sftp, base)) > 0:
            assert time.monotonic() - restarted_at < 60, await _staging(sftp, base)
            await asyncio.sleep(0.5)
        swept_at = time.monotonic()
    assert time.time() >= expires  # the tus upload's staging went only once it expired
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM transfers").fetchone() == (0,)
    print(
        f"\nRESTART reaper: orphaned job {job_id} CANCELLED {cancelled_at - restarted_at:.2f} s "
        f"after the restart began; expired tus staging removed "
        f"{swept_at - restarted_at:.2f} s after it (TTL 20 s)"
    )


async def _job_state(ssh_as: Any, job_id: str) -> str:
    connection = await ssh_as("hpcuser1")
    result = await connection.run(f"squeue -h -j {int(job_id)} -o %T", check=False)
    return str(result.stdout).strip()
