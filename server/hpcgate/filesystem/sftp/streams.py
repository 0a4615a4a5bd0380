"""A streamed read of an open SFTP file, several requests fetched ahead."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncssh

from hpcgate.filesystem.base import ReadStream
from hpcgate.filesystem.sftp.pipeline import read_window


class SftpReadStream(ReadStream):
    """Reads ``length`` bytes in blocks of one SFTP request each, up to
    ``pipeline.WINDOW`` of them in flight while the earlier ones are sent on."""

    def __init__(
        self,
        stack: AsyncExitStack,
        handle: asyncssh.SFTPClientFile,
        *,
        offset: int,
        length: int,
        file_size: int,
        block: int,
        timeout: float,
    ) -> None:
        self._stack = stack
        self._handle = handle
        self.offset = offset
        self.length = length
        self.file_size = file_size
        self._block = block
        self._timeout = timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        blocks = read_window(
            self._handle,
            offset=self.offset,
            length=self.length,
            block=self._block,
            timeout=self._timeout,
        )
        try:
            async for block in blocks:
                yield block
        finally:
            await blocks.aclose()
            await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._stack.aclose()
