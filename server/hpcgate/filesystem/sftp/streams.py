"""A streamed read of an open SFTP file, one chunk fetched ahead."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncssh

from hpcgate.errors import (
    RequestTimeout,
)
from hpcgate.filesystem.base import ReadStream


class SftpReadStream(ReadStream):
    """Reads ``length`` bytes in chunks, fetching the next chunk while one is sent."""

    def __init__(
        self,
        stack: AsyncExitStack,
        handle: asyncssh.SFTPClientFile,
        *,
        offset: int,
        length: int,
        file_size: int,
        chunk_size: int,
        timeout: float,
    ) -> None:
        self._stack = stack
        self._handle = handle
        self.offset = offset
        self.length = length
        self.file_size = file_size
        self._chunk_size = chunk_size
        self._timeout = timeout
        self._closed = False

    async def _read(self, offset: int, size: int) -> bytes:
        async with asyncio.timeout(self._timeout):
            try:
                data: object = await self._handle.read(size, offset)
            except asyncssh.SFTPEOFError:
                return b""
        assert isinstance(data, bytes)
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        position, end = self.offset, self.offset + self.length
        ahead: asyncio.Task[bytes] | None = None
        try:
            while position < end:
                if ahead is None:
                    ahead = asyncio.ensure_future(
                        self._read(position, min(self._chunk_size, end - position))
                    )
                try:
                    chunk = await ahead
                except TimeoutError:
                    raise RequestTimeout("Reading from the cluster timed out") from None
                ahead = None
                if not chunk:
                    break
                position += len(chunk)
                if position < end:
                    ahead = asyncio.ensure_future(
                        self._read(position, min(self._chunk_size, end - position))
                    )
                yield chunk
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
            await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._stack.aclose()
