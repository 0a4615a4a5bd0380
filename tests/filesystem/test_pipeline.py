"""Streamed transfers with many SFTP requests in flight (``filesystem.sftp.pipeline``):
bodies of uneven chunks land byte for byte, downloads come back whole and in order."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.site, pytest.mark.e2e]

MIB = 1024 * 1024
# uneven pieces: smaller than, equal to and straddling the 255 KiB SFTP block
PIECES = (1, 7, 261_119, 261_120, 261_121, 65_536, 3, 1_000_000, 12_345)


def _multipart(boundary: str, name: str, data: bytes) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    position, index = 0, 0
    while position < len(data):
        size = PIECES[index % len(PIECES)]
        yield data[position : position + size]
        position += size
        index += 1
    yield f"\r\n--{boundary}--\r\n".encode()


async def test_uneven_upload_and_download_round_trip(
    api: dict[str, httpx.Client], workdir: dict[str, str], sftp_as: Any
) -> None:
    base = workdir["hpcuser1"]
    client = api["hpcuser1"]
    data = os.urandom(9 * MIB + 4321)  # many blocks, more than one window each way
    boundary = "pipeline-test-boundary"
    uploaded = client.post(
        "/upload",
        params={"path": base},
        content=_multipart(boundary, "big.bin", data),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert uploaded.status_code == 204, uploaded.text
    sftp = await sftp_as("hpcuser1")
    async with sftp.open(f"{base}/big.bin", "rb") as handle:
        on_cluster = await handle.read()
    assert hashlib.sha256(on_cluster).hexdigest() == hashlib.sha256(data).hexdigest()

    with client.stream("GET", "/download", params={"path": f"{base}/big.bin"}) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(data))
        received = b"".join(response.iter_bytes())
    assert received == data

    empty = client.post(
        "/upload",
        params={"path": base},
        content=_multipart(boundary, "empty.bin", b""),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert empty.status_code == 204, empty.text
    assert client.get("/download", params={"path": f"{base}/empty.bin"}).content == b""
