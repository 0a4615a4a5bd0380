"""Resumable uploads (tus 1.0 core): interrupted, resumed from HEAD's offset, verified."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from typing import Any
from urllib.parse import urlsplit

import asyncssh
import httpx
import pytest

from tests.transfer.conftest import TransferServer

pytestmark = [pytest.mark.site, pytest.mark.e2e]

TUS = {"Tus-Resumable": "1.0.0"}
MIB = 1024 * 1024


def _metadata(path: str, digest: bytes) -> str:
    encoded = base64.b64encode(path.encode()).decode()
    return f"path {encoded},sha256 {base64.b64encode(digest).decode()}"


async def _create(
    client: httpx.AsyncClient, server: TransferServer, path: str, data: bytes, digest: bytes
) -> str:
    response = await client.post(
        server.path("uploads"),
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": _metadata(path, digest),
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    return response.headers["Location"]


async def _patch(client: httpx.AsyncClient, url: str, offset: int, body: bytes) -> httpx.Response:
    headers = {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    return await client.patch(url, headers=headers, content=body)


async def _interrupted_patch(
    server: TransferServer, url: str, user: str, data: bytes, send: int
) -> None:
    """A PATCH announcing all of ``data`` whose connection breaks after ``send`` bytes."""
    location = urlsplit(url)
    _, writer = await asyncio.open_connection(location.hostname, location.port)
    head = (
        f"PATCH {location.path} HTTP/1.1\r\nHost: {location.netloc}\r\n"
        f"Authorization: Bearer {server.token(user)}\r\nTus-Resumable: 1.0.0\r\n"
        "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data[:send])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.transport.abort()  # the connection drops mid-body


async def _listing(sftp: asyncssh.SFTPClient, path: str) -> list[str]:
    return sorted(name for name in await sftp.listdir(path) if name not in (".", ".."))


async def test_interrupted_upload_resumes_to_a_verified_file(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any
) -> None:
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    data = os.urandom(12 * MIB + 7)
    digest = hashlib.sha256(data).digest()
    target = f"{base}/resumed.bin"
    async with xfer.async_client("hpcuser1") as client:
        options = await client.options(xfer.path("uploads"))
        assert options.status_code == 204
        assert options.headers["Tus-Version"] == "1.0.0"
        assert "creation" in options.headers["Tus-Extension"]

        url = await _create(client, xfer, target, data, digest)
        await _interrupted_patch(xfer, url, "hpcuser1", data, 5 * MIB + 3)
        head = await client.head(url, headers=TUS)
        assert head.status_code == 200
        assert head.headers["Upload-Length"] == str(len(data))
        assert head.headers["Cache-Control"] == "no-store"
        offset = int(head.headers["Upload-Offset"])
        assert 0 < offset <= 5 * MIB + 3
        assert not await sftp.exists(target)

        # only the committed offset is accepted; others are told where it is
        wrong = await _patch(client, url, offset + 1, data[offset + 1 : offset + 101])
        assert wrong.status_code == 409
        assert wrong.headers["Upload-Offset"] == str(offset)
        # another user does not see the upload
        async with xfer.async_client("hpcuser2") as other:
            assert (await other.head(url, headers=TUS)).status_code == 404
        # without the protocol header: 412
        assert (await client.head(url)).status_code == 412

        # two more pieces, the second one finishing the file
        middle = offset + 3 * MIB
        response = await _patch(client, url, offset, data[offset:middle])
        assert response.status_code == 204, response.text
        assert response.headers["Upload-Offset"] == str(middle)
        response = await _patch(client, url, middle, data[middle:])
        assert response.status_code == 204, response.text
        assert response.headers["Upload-Offset"] == str(len(data))
        done = await client.head(url, headers=TUS)
        assert done.headers["Upload-Offset"] == str(len(data))
        checksum = await client.get(xfer.path("ops/checksum"), params={"path": target})
    assert checksum.json()["output"]["checksum"] == hashlib.sha256(data).hexdigest()
    assert await _listing(sftp, base) == ["resumed.bin"]  # the temporary file is gone


async def test_wrong_checksum_is_rejected_and_nothing_is_left(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any
) -> None:
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    data = os.urandom(2 * MIB)
    target = f"{base}/bad.bin"
    async with xfer.async_client("hpcuser1") as client:
        url = await _create(client, xfer, target, data, hashlib.sha256(b"other").digest())
        response = await _patch(client, url, 0, data)
        assert response.status_code == 460, response.text
        assert "Checksum Mismatch" in response.text
        assert (await client.head(url, headers=TUS)).status_code == 404
        assert await _listing(sftp, base) == []

        # too many bytes, an unknown upload, termination
        url = await _create(client, xfer, target, data, hashlib.sha256(data).digest())
        response = await _patch(client, url, 0, data + b"extra")
        assert response.status_code == 400 and "Upload-Length" in response.text
        unknown = url.rsplit("/", 1)[0] + "/" + "0" * 32
        assert (await client.head(unknown, headers=TUS)).status_code == 404
        response = await client.delete(url, headers=TUS)
        assert response.status_code == 204
        assert await _listing(sftp, base) == []

        # refused before anything is created
        for metadata, code in [
            (_metadata("/etc/x", hashlib.sha256(data).digest()), 403),
            (_metadata(f"{base}/../x", hashlib.sha256(data).digest()), 400),
            ("path " + base64.b64encode(target.encode()).decode(), 400),  # no sha256
        ]:
            response = await client.post(
                xfer.path("uploads"),
                headers={**TUS, "Upload-Length": "10", "Upload-Metadata": metadata},
            )
            assert response.status_code == code, response.text
    async with xfer.async_client("hpcuser2") as other:
        response = await other.post(
            xfer.path("uploads"),
            headers={
                **TUS,
                "Upload-Length": "10",
                "Upload-Metadata": _metadata(f"{base}/x", hashlib.sha256(b"").digest()),
            },
        )
        assert response.status_code == 403, response.text
    assert await _listing(sftp, base) == []
