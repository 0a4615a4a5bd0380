"""transfer/upload and transfer/download by hand: signed URLs, parts, completion, ranges."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncssh
import httpx
import pytest
from firecrest.utilities import part_checksum_xml

from hpcgate.transfer.signing import Binding, UrlSigner
from tests.transfer.conftest import (
    PART_SIZE,
    SIGNING_KEY,
    TransferServer,
    read_text,
    wait_for_job,
)

pytestmark = [pytest.mark.site, pytest.mark.e2e]


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


async def _exists(sftp: asyncssh.SFTPClient, path: str) -> bool:
    try:
        await sftp.lstat(path)
    except asyncssh.SFTPNoSuchFile:
        return False
    return True


async def _start_upload(
    client: httpx.AsyncClient, server: TransferServer, path: str, size: int
) -> dict[str, Any]:
    response = await client.post(
        server.path("transfer/upload"),
        json={"path": path, "transfer_directives": {"file_size": size, "transfer_method": "s3"}},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_multipart_upload_checks_every_part(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any
) -> None:
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    data = os.urandom(2 * PART_SIZE + 1000)
    target = f"{base}/up.bin"
    async with xfer.async_client("hpcuser1") as client, httpx.AsyncClient(timeout=60) as anon:
        info = await _start_upload(client, xfer, target, len(data))
        directives = info["transferDirectives"]
        assert directives["transferMethod"] == "s3"
        assert directives["maxPartSize"] == PART_SIZE
        urls = directives["partsUploadUrls"]
        assert len(urls) == 3
        chunks = [data[i : i + PART_SIZE] for i in range(0, len(data), PART_SIZE)]

        # no bearer token needed; the last part first: parts land at their offsets
        etags: dict[int, str] = {}
        for number in (3, 1, 2):
            response = await anon.put(urls[number - 1], content=chunks[number - 1])
            assert response.status_code == 200, response.text
            etags[number] = response.headers["ETag"]
            assert etags[number] == f'"{hashlib.md5(chunks[number - 1]).hexdigest()}"'

        # a part of the wrong size is refused, and does not count; so is a bad Content-MD5
        # (bodies refused before they are read are kept small: the server closes the
        # connection after such an answer instead of draining the body)
        short = await anon.put(urls[1], content=chunks[1][:100])
        assert short.status_code == 400 and "exactly" in short.text
        md5 = base64.b64encode(hashlib.md5(chunks[0]).digest()).decode()
        bad = await anon.put(urls[1], content=chunks[1], headers={"Content-MD5": md5})
        assert bad.status_code == 400 and "BadDigest" in bad.text
        good = await anon.put(urls[0], content=chunks[0], headers={"Content-MD5": md5})
        assert good.status_code == 200 and good.headers["ETag"] == etags[1]
        # nothing at the target until completion
        assert not await _exists(sftp, target)
        temp = [n for n in await sftp.listdir(base) if n.startswith(".hpcgate-upload-")]
        assert len(temp) == 1

        def tags(numbers: list[int], **wrong: str) -> str:
            return part_checksum_xml(
                [{"ETag": wrong.get(str(n), etags[n]), "PartNumber": n} for n in numbers]
            )

        complete = directives["completeUploadUrl"]
        for body, text in [
            (tags([1, 2]), "parts 1 to 3"),
            (tags([1, 3, 2]), "in order"),
            (tags([1, 2, 3], **{"2": '"00000000000000000000000000000000"'}), "ETag of part 2"),
            ("<CompleteMultipartUpload", "not XML"),
        ]:
            response = await anon.post(complete, content=body)
            assert response.status_code == 400, response.text
            assert text in response.text
        assert not await _exists(sftp, target)

        response = await anon.post(complete, content=tags([1, 2, 3]))
        assert response.status_code == 200, response.text
        assert "<CompleteMultipartUploadResult" in response.text
        again = await anon.post(complete, content=tags([1, 2, 3]))
        assert again.status_code == 200 and again.text == response.text
        late = await anon.put(urls[0], content=chunks[0][:100])
        assert late.status_code == 409

        job = info["transferJob"]
        ended = await wait_for_job(client, xfer.system, job["jobId"])
    assert ended["status"]["state"] == "COMPLETED"
    assert ended["partition"] == "xfer"
    log = await read_text(sftp, job["logs"]["outputLog"])
    assert f"Multipart file upload successfully completed: {target} ({len(data)} bytes)" in log
    async with sftp.open(target, "rb") as handle:
        assert hashlib.sha256(await handle.read()).digest() == hashlib.sha256(data).digest()
    assert not [n for n in await sftp.listdir(base) if n.startswith(".hpcgate-upload-")]


async def test_tampered_and_expired_urls_are_refused(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any
) -> None:
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    target = f"{base}/t.bin"
    async with xfer.async_client("hpcuser1") as client, httpx.AsyncClient(timeout=60) as anon:
        info = await _start_upload(client, xfer, target, PART_SIZE + 10)
        directives = info["transferDirectives"]
        part1, part2 = directives["partsUploadUrls"]
        complete = directives["completeUploadUrl"]
        expires = parse_qs(urlsplit(part1).query)["expires"][0]
        signature = parse_qs(urlsplit(part1).query)["signature"][0]
        flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
        transfer_id = urlsplit(part1).path.split("/")[2]

        # the test knows the server's key: a correctly signed URL whose time is up
        signer = UrlSigner(SIGNING_KEY.encode())
        binding = Binding(transfer_id, "hpcuser1", xfer.system, target)
        path = urlsplit(part1).path
        past = int(time.time()) - 1
        old = parse_qs(signer.query("PUT", path, binding, expires=past, part=1))
        expired = _with_query(part1, **{key: values[0] for key, values in old.items()})
        refused = {
            "signature changed": _with_query(part1, signature=flipped),
            "signature missing": _with_query(part1, signature=""),
            "expiry extended": _with_query(part1, expires=str(int(expires) + 1)),
            "expired": expired,
            "other part": _with_path(part1, urlsplit(part2).path),
            "complete's signature": _with_path(complete, path),
        }
        for reason, url in refused.items():
            response = await anon.put(url, content=b"x" * 100)
            assert response.status_code == 403, (reason, response.text)
        # a part URL cannot complete, a complete URL cannot be read
        response = await anon.post(_with_path(part1, urlsplit(complete).path), content=b"")
        assert response.status_code == 403
        response = await anon.get(_with_path(complete, path.replace("parts/1", "download")))
        assert response.status_code == 404  # not a download: nothing to say about it
        unknown = _with_path(part1, path.replace(transfer_id, "f" * 32))
        assert (await anon.put(unknown, content=b"x")).status_code == 404
        # the real URL still works
        response = await anon.put(part1, content=b"x" * PART_SIZE)
        assert response.status_code == 200, response.text

        # the reaper cancels the job of an upload that expired and removes its file
        service = xfer.transfers
        loop = service._loops[0].get_loop()

        async def expire_and_reap() -> int:
            await service.store.backend.update(transfer_id, {"expires_at": time.time() - 1})
            return await service.reaper.run_once()

        reaped = asyncio.run_coroutine_threadsafe(expire_and_reap(), loop)
        assert await asyncio.wrap_future(reaped) >= 1
        assert (await anon.put(part2, content=b"y" * 10)).status_code == 404
        ended = await wait_for_job(client, xfer.system, info["transferJob"]["jobId"])
    assert ended["status"]["state"] == "CANCELLED"
    assert sorted(await sftp.listdir(base)) == [".", ".."]  # no target, no temp file


async def test_download_url_streams_with_ranges(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any
) -> None:
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    data = os.urandom(3 * 1024 * 1024 + 17)
    async with sftp.open(f"{base}/d.bin", "wb") as handle:
        await handle.write(data)
    async with xfer.async_client("hpcuser1") as client, httpx.AsyncClient(timeout=60) as anon:
        response = await client.post(
            xfer.path("transfer/download"),
            json={"source_path": f"{base}/d.bin", "transfer_directives": {"transferMethod": "s3"}},
        )
        assert response.status_code == 201, response.text
        info = response.json()
        url = info["transferDirectives"]["downloadUrl"]
        whole, head, ranged, tail, beyond, tampered, ended = await asyncio.gather(
            anon.get(url),
            anon.head(url),
            anon.get(url, headers={"Range": "bytes=100-199"}),
            anon.get(url, headers={"Range": "bytes=-5"}),
            anon.get(url, headers={"Range": f"bytes={len(data)}-"}),
            anon.get(_with_query(url, expires="9999999999")),
            wait_for_job(client, xfer.system, info["transferJob"]["jobId"]),
        )
        missing = await client.post(
            xfer.path("transfer/download"),
            json={"sourcePath": f"{base}/none", "transferDirectives": {"transferMethod": "s3"}},
        )
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-length"] == str(len(data))
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    assert ranged.status_code == 206 and ranged.content == data[100:200]
    assert ranged.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert tail.status_code == 206 and tail.content == data[-5:]
    assert beyond.status_code == 416
    assert tampered.status_code == 403
    assert missing.status_code == 404 and "No such file or directory" in missing.text
    assert ended["status"]["state"] == "COMPLETED"
    log = await read_text(sftp, info["transferJob"]["logs"]["outputLog"])
    assert f"File was successfully made ready for download: {base}/d.bin" in log
