"""The streaming multipart reader, fed bodies cut at awkward places."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest

from hpcgate.errors import BadRequest
from hpcgate.filesystem.multipart import MultipartFile, boundary_of


def encode(files: dict, data: dict | None = None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("piece", [1, 7, 4096, 65536, 10**7])
async def test_file_bytes_stream_out_exactly(piece: int) -> None:
    payload = os.urandom(200_000) + b"\r\n--not-a-boundary\r\n"
    body, content_type = encode({"file": ("data.bin", payload)}, {"note": "before"})
    reader = MultipartFile(pieces(body, piece), boundary_of(content_type))
    assert await reader.find() == "data.bin"
    chunks = [chunk async for chunk in reader.data()]
    assert b"".join(chunks) == payload
    if piece >= 4096:
        assert max(map(len, chunks)) <= piece


async def test_quotes_and_dollar_in_the_filename_are_literal() -> None:
    name = "it's $(touch x) `id`.txt"
    body, content_type = encode({"file": (name, b"x")})
    reader = MultipartFile(pieces(body, 10), boundary_of(content_type))
    assert await reader.find() == name


async def test_rfc5987_filename() -> None:
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%C3%A9t%C3%A9.txt\r\n"
        "\r\n"
        f"abc\r\n--{boundary}--\r\n"
    ).encode()
    reader = MultipartFile(pieces(body, 5), boundary.encode())
    assert await reader.find() == "été.txt"
    assert b"".join([c async for c in reader.data()]) == b"abc"


async def test_missing_field_is_a_bad_request() -> None:
    body, content_type = encode({"other": ("a.txt", b"x")})
    with pytest.raises(BadRequest, match="no 'file' field"):
        await MultipartFile(pieces(body, 100), boundary_of(content_type)).find()


async def test_truncated_body_is_a_bad_request() -> None:
    body, content_type = encode({"file": ("a.bin", b"y" * 10_000)})
    reader = MultipartFile(pieces(body[:5000], 1000), boundary_of(content_type))
    await reader.find()
    with pytest.raises(BadRequest, match="ended inside the file"):
        async for _ in reader.data():
            pass


@pytest.mark.parametrize(
    "content_type", [None, "", "application/json", "multipart/form-data", "text/plain; boundary=x"]
)
def test_content_type_must_be_multipart_with_boundary(content_type: str | None) -> None:
    with pytest.raises(BadRequest):
        boundary_of(content_type)
