"""A lean HTTP/1.1 download client for the benchmarks: one GET, the body counted and
dropped as it arrives (an ``asyncio.Protocol``: no parser objects, no buffering, no
copies).

It is the client-side counterpart of the floor server: the least work a client can
do to take a response in, so that a download's figure shows what the server costs
rather than what a general-purpose client (aiohttp: ~0.45 CPU s/GiB here, on the
same two cores as the server) costs. Its floor is an SFTP ``get`` that drops the
bytes too (into ``/dev/null``).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

#: the most a response head may take
_HEAD_LIMIT = 64 * 1024


class _Sink(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[int]) -> None:
        self._done = done
        self._head = b""
        self._left: int | None = None
        self._received = 0

    def data_received(self, data: bytes) -> None:
        if self._left is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > _HEAD_LIMIT:
                    self._fail("response head too large")
                return
            head, data = self._head[:end].decode("latin-1"), self._head[end + 4 :]
            self._head = b""
            status, _, _ = head.partition("\r\n")
            if status.split(" ", 2)[1] != "200":
                self._fail(f"unexpected answer: {status}")
                return
            lengths = [
                line.split(":", 1)[1] for line in head.split("\r\n")
                if line.lower().startswith("content-length:")
            ]  # fmt: skip
            if len(lengths) != 1:
                self._fail("no Content-Length")
                return
            self._left = int(lengths[0])
        self._received += len(data)
        self._left -= len(data)
        if self._left <= 0 and not self._done.done():
            self._done.set_result(self._received)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection closed after {self._received} bytes ({exc})")

    def _fail(self, reason: str) -> None:
        if not self._done.done():
            self._done.set_exception(RuntimeError(reason))


async def download_discarding(url: str, headers: dict[str, str], timeout: float) -> int:
    """GET ``url`` and drop the body; the body's length (checked against its
    ``Content-Length``)."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: _Sink(done), parts.hostname, parts.port or 80
    )
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        async with asyncio.timeout(timeout):
            return await done
    finally:
        transport.close()
