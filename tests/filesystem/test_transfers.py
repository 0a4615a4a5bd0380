"""ops/upload and ops/download: byte-exact, streamed, capped."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.filesystem.conftest import FsServer, running_server

pytestmark = [pytest.mark.site, pytest.mark.e2e]

MIB = 1024 * 1024


def multipart_stream(
    name: str, size: int, seed: bytes, boundary: str = "hpcgate-test-boundary"
) -> tuple[Iterator[bytes], str, str]:
    """A multipart body generated piece by piece (never whole in memory), its sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha512(seed).digest() * 1024  # 64 KiB of pseudo-random bytes

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            sent += len(piece)
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()

    remaining = size
    while remaining > 0:
        digest.update(block[: min(len(block), remaining)])
        remaining -= len(block)
    return body(), f"multipart/form-data; boundary={boundary}", digest.hexdigest()


def test_upload_and_download_a_few_mib_byte_exact(api, workdir) -> None:
    base = workdir["hpcuser1"]
    data = os.urandom(5 * MIB + 12345)
    client = api["hpcuser1"]
    response = client.post("/upload", params={"path": base}, files={"file": ("big.bin", data)})
    assert response.status_code == 204, response.text

    digest = hashlib.sha256()
    with client.stream("GET", "/download", params={"path": f"{base}/big.bin"}) as download:
        assert download.status_code == 200
        assert download.headers["content-length"] == str(len(data))
        for chunk in download.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    checksum = client.get("/checksum", params={"path": f"{base}/big.bin"}).json()["output"]
    assert checksum["checksum"] == digest.hexdigest()


def test_chunked_upload_without_content_length(api, workdir) -> None:
    base = workdir["hpcuser1"]
    body, content_type, expected = multipart_stream("chunked.bin", 3 * MIB + 7, b"chunked")
    response = api["hpcuser1"].post(
        "/upload", params={"path": base}, content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 204, response.text
    checksum = api["hpcuser1"].get("/checksum", params={"path": f"{base}/chunked.bin"})
    assert checksum.json()["output"]["checksum"] == expected


def test_upload_streams_instead_of_buffering(api, workdir) -> None:
    """64 MiB through the in-process server: Python allocations stay a few MiB."""
    base = workdir["hpcuser1"]
    body, content_type, expected = multipart_stream("stream.bin", 64 * MIB, b"stream")
    tracemalloc.start()
    try:
        response = api["hpcuser1"].post(
            "/upload", params={"path": base}, content=body, headers={"Content-Type": content_type}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 204, response.text
    assert peak < 16 * MIB, f"peak Python allocation {peak / MIB:.1f} MiB"
    checksum = api["hpcuser1"].get("/checksum", params={"path": f"{base}/stream.bin"})
    assert checksum.json()["output"]["checksum"] == expected


@pytest.fixture(scope="module")
def small_caps(site_env, tmp_path_factory) -> Iterator[FsServer]:
    """A server whose direct-transfer cap is 1 MiB and content cap 64 KiB."""
    limits = {"max_ops_file_size": MIB, "max_content_size": 64 * 1024}
    with running_server(
        site_env, tmp_path_factory.mktemp("caps-keys"), filesystem_limits=limits
    ) as server:
        yield server


def test_caps_answer_413(small_caps: FsServer, workdir, site_env) -> None:
    base = workdir["hpcuser1"]
    with small_caps.client("hpcuser1") as client:
        declared = client.post(
            "/upload", params={"path": base}, files={"file": ("over.bin", b"x" * (2 * MIB))}
        )
        assert declared.status_code == 413, declared.text
        body, content_type, _ = multipart_stream("over-chunked.bin", 2 * MIB, b"over")
        streamed = client.post(
            "/upload", params={"path": base}, content=body, headers={"Content-Type": content_type}
        )
        assert streamed.status_code == 413, streamed.text
        listing = client.get("/ls", params={"path": base}).json()["output"]
        assert listing == []  # the partial file was removed

        at_cap = client.post(
            "/upload", params={"path": base}, files={"file": ("at-cap.bin", b"y" * MIB)}
        )
        assert at_cap.status_code == 204
        with client.stream("GET", "/download", params={"path": f"{base}/at-cap.bin"}) as response:
            assert response.status_code == 200
            assert sum(len(chunk) for chunk in response.iter_bytes()) == MIB
        assert client.get("/view", params={"path": f"{base}/at-cap.bin"}).status_code == 200
        assert len(client.get("/view", params={"path": f"{base}/at-cap.bin"}).json()["output"]) == (
            64 * 1024
        )
        over_view = client.get("/view", params={"path": f"{base}/at-cap.bin", "size": 65537})
        assert over_view.status_code == 400
        over_head = client.get("/head", params={"path": f"{base}/at-cap.bin", "bytes": 65537})
        assert over_head.status_code == 413
        # one 1 MiB "line": the first 10 lines are over the content cap
        assert client.get("/head", params={"path": f"{base}/at-cap.bin"}).status_code == 413


async def test_download_over_cap_is_413(small_caps: FsServer, workdir, sftp_as) -> None:
    path = f"{workdir['hpcuser1']}/over-{uuid.uuid4().hex[:6]}.bin"
    sftp = await sftp_as("hpcuser1")
    async with sftp.open(path, "wb", encoding=None) as handle:
        await handle.write(b"o" * (MIB + 1))
    with small_caps.client("hpcuser1") as client:
        response = client.get("/download", params={"path": path})
        assert response.status_code == 413
        assert "transfer/download" in response.json()["message"]


def test_aborted_download_frees_the_session(api, fs_server, workdir) -> None:
    """A client that walks away mid-download does not leave the SFTP session stuck."""
    base = workdir["hpcuser1"]
    api["hpcuser1"].post(
        "/upload", params={"path": base}, files={"file": ("abort.bin", os.urandom(8 * MIB))}
    )
    for _ in range(3):
        with httpx.Client(timeout=30) as other:
            headers = {"Authorization": f"Bearer {fs_server.token('hpcuser1')}"}
            url = f"{fs_server.url}/filesystem/{fs_server.system}/ops/download"
            with other.stream(
                "GET", url, params={"path": f"{base}/abort.bin"}, headers=headers
            ) as response:
                next(response.iter_raw(65536))
    listing = api["hpcuser1"].get("/ls", params={"path": base})
    assert listing.status_code == 200
