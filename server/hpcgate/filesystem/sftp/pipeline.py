"""SFTP reads and writes with many requests in flight, each one SFTP message.

One request at a time costs a round trip per block (and the cluster's disk latency);
asyncssh's ``SFTPClientFile.write``/``read`` of a large block split it into parallel
requests but wait for all of them, copy the pieces, and start over with the next
block. Here the handles are opened with ``block_size=0`` (every call is exactly one
request) and these classes keep up to ``window`` requests of the server's largest
message size (``sftp.limits``) in flight, in order, bounded: at most ``window``
blocks per stream are held (2-4 MiB up, 4 MiB down), whatever the client or the
cluster do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from typing import cast

import asyncssh

from hpcgate.errors import RequestTimeout

#: called with acknowledged bytes (in order, about ``commit_size`` at a time) and their offset
Written = Callable[[bytes, int], Awaitable[None]]

#: reads in flight per stream: 16 x 255 KiB (OpenSSH's message size) = 4 MiB
WINDOW = 16
#: writes in flight per stream: 8 x 255 KiB = 2 MiB, sshd's channel window; a transfer's
#: parts run several at once on the user's one channel, where more only waits, copied,
#: in asyncssh's send buffer. A whole-file upload takes twice this (``WHOLE_FILE_WINDOW``)
WRITE_WINDOW = 8
#: acknowledged bytes are handed to ``on_written`` (tus: hashed, then the offset and
#: hash state saved) in batches of at least this much: a save per 4 MiB, not per block
COMMIT_BYTES = 4 * 1024 * 1024
#: the largest read/write a server that announces no limits takes (SFTP v3 guarantee)
_DEFAULT_BLOCK = 32 * 1024


def block_size(sftp: asyncssh.SFTPClient) -> int:
    """The largest data one SFTP read or write request may carry on this session."""
    limits = sftp.limits
    return max(min(limits.max_write_len, limits.max_read_len) or _DEFAULT_BLOCK, 1024)


class WritePipeline:
    """Writes a stream of bytes at increasing offsets, ``window`` requests in flight.

    ``on_written`` sees the acknowledged bytes in order, in batches of at least
    ``commit_size`` (and the rest at the end): a tus upload hashes and commits them.
    """

    def __init__(
        self,
        handle: asyncssh.SFTPClientFile,
        *,
        offset: int,
        block: int,
        timeout: float,
        commit_size: int,
        on_written: Written | None = None,
        window: int = WRITE_WINDOW,
    ) -> None:
        self._handle = handle
        self._position = offset
        self._block = block
        self._timeout = timeout
        self._window = window
        self._on_written = on_written
        self._commit_size = commit_size
        self._in_flight: deque[tuple[asyncio.Task[object], bytes | memoryview, int]] = deque()
        self._acked: list[bytes | memoryview] = []
        self._acked_at = offset
        self._acked_bytes = 0

    async def write_all(self, chunks: AsyncIterable[bytes]) -> int:
        """Write every chunk; the number of bytes written. Cancels what is in flight on
        failure (nothing after an error counts as written)."""
        # Only bytes that complete a block from several pieces are copied (joined); whole
        # blocks inside a chunk go out as views of it, so a chunk of several blocks (a
        # part's hashed batch) is not copied again. Chunks must not change once yielded.
        pending: list[memoryview] = []
        buffered = total = 0
        block = self._block
        try:
            async for chunk in chunks:
                total += len(chunk)
                view = memoryview(chunk)
                if pending:
                    head = view[: block - buffered]
                    pending.append(head)
                    buffered += len(head)
                    view = view[len(head) :]
                    if buffered < block:
                        continue
                    await self._send(b"".join(pending))
                    pending.clear()
                    buffered = 0
                while len(view) >= block:
                    await self._send(view[:block])
                    view = view[block:]
                if view:
                    pending.append(view)
                    buffered = len(view)
            if pending:
                await self._send(pending[0] if len(pending) == 1 else b"".join(pending))
            while self._in_flight:
                await self._retire()
            await self._commit()
        finally:
            await self._cancel()
        return total

    async def _send(self, data: bytes | memoryview) -> None:
        while len(self._in_flight) >= self._window:
            await self._retire()
        # a memoryview goes in as it is: asyncssh copies it once into the SFTP message
        task = asyncio.ensure_future(self._handle.write(cast(bytes, data), self._position))
        self._in_flight.append((task, data, self._position))
        self._position += len(data)

    async def _retire(self) -> None:
        """Wait for the oldest request; hand acknowledged bytes on in batches."""
        task, data, _ = self._in_flight[0]
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.shield(task)
        except TimeoutError:
            raise RequestTimeout("Writing to the cluster timed out") from None
        self._in_flight.popleft()
        if self._on_written is not None:
            self._acked.append(data)
            self._acked_bytes += len(data)
            if self._acked_bytes >= self._commit_size:
                await self._commit()

    async def _commit(self) -> None:
        if self._on_written is None or not self._acked:
            return
        data = b"".join(self._acked)
        self._acked.clear()
        self._acked_bytes = 0
        at, self._acked_at = self._acked_at, self._acked_at + len(data)
        await self._on_written(data, at)

    async def _cancel(self) -> None:
        tasks = [task for task, _, _ in self._in_flight]
        self._in_flight.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


async def read_window(
    handle: asyncssh.SFTPClientFile,
    *,
    offset: int,
    length: int,
    block: int,
    timeout: float,
    window: int = WINDOW,
) -> AsyncGenerator[bytes, None]:
    """``length`` bytes from ``offset`` in order, ``window`` read requests in flight.

    Stops early at the end of the file (a file that shrank); a short read in the
    middle is completed by one more request before going on.
    """
    end = offset + length
    issued = offset
    ahead: deque[tuple[asyncio.Task[bytes], int, int]] = deque()

    async def read(at: int, size: int) -> bytes:
        try:
            data: object = await handle.read(size, at)
        except asyncssh.SFTPEOFError:
            return b""
        assert isinstance(data, bytes)
        return data

    def fill() -> None:
        nonlocal issued
        while issued < end and len(ahead) < window:
            size = min(block, end - issued)
            ahead.append((asyncio.ensure_future(read(issued, size)), issued, size))
            issued += size

    async def wait(awaitable: Awaitable[bytes]) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await awaitable
        except TimeoutError:
            raise RequestTimeout("Reading from the cluster timed out") from None

    try:
        fill()
        while ahead:
            task, at, size = ahead[0]
            data = await wait(task)
            ahead.popleft()
            while data and len(data) < size:  # short read: the rest of this block
                yield data
                at, size = at + len(data), size - len(data)
                data = await wait(read(at, size))
            if not data:
                return  # end of file
            fill()
            yield data
    finally:
        for task, _, _ in ahead:
            task.cancel()
        for task, _, _ in ahead:
            with contextlib.suppress(BaseException):
                await task
