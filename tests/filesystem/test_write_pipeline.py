"""``WritePipeline`` without a cluster: each request at most one block, at its offset,
in order; whole blocks inside a chunk are sent as views of it, not copies."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncssh

from hpcgate.filesystem.sftp.pipeline import WritePipeline
from tests.streams import chunked

BLOCK = 1000


class _Handle:
    """Records each SFTP write (offset, data as sent)."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes | memoryview]] = []

    async def write(self, data: bytes | memoryview, offset: int) -> int:
        self.writes.append((offset, data))
        return len(data)


def _pipeline(handle: _Handle, offset: int = 0, **kwargs: Any) -> WritePipeline:
    return WritePipeline(
        cast(asyncssh.SFTPClientFile, handle),
        offset=offset,
        block=BLOCK,
        timeout=5.0,
        commit_size=4 * BLOCK,
        window=3,
        **kwargs,
    )


async def test_uneven_chunks_land_in_blocks_at_their_offsets() -> None:
    data = os.urandom(20 * BLOCK + 17)
    acknowledged: list[tuple[int, bytes]] = []

    async def on_written(batch: bytes, at: int) -> None:
        acknowledged.append((at, batch))

    for sizes in ([1, 999, 1000, 1001, 2500, 7], [BLOCK], [3 * BLOCK + 1], [20 * BLOCK + 17]):
        handle = _Handle()
        acknowledged.clear()
        written = await _pipeline(handle, 100, on_written=on_written).write_all(
            chunked(data, sizes)
        )
        assert written == len(data)
        assert [len(chunk) for _, chunk in handle.writes] == [BLOCK] * 20 + [17]
        assert [at for at, _ in handle.writes] == [100 + i * BLOCK for i in range(21)]
        assert b"".join(bytes(chunk) for _, chunk in handle.writes) == data
        assert b"".join(batch for _, batch in acknowledged) == data
        assert acknowledged[0][0] == 100
        assert all(len(batch) >= 4 * BLOCK for _, batch in acknowledged[:-1])


async def test_whole_blocks_of_a_chunk_are_not_copied() -> None:
    chunk = os.urandom(3 * BLOCK)
    handle = _Handle()

    async def one() -> AsyncIterator[bytes]:
        yield chunk

    await _pipeline(handle).write_all(one())
    assert len(handle.writes) == 3
    for _, sent in handle.writes:
        assert isinstance(sent, memoryview) and sent.obj is chunk


async def test_no_more_than_the_window_is_in_flight() -> None:
    """What a stream holds is bounded by its window, however fast the body comes."""
    in_flight = most = 0

    class _Slow(_Handle):
        async def write(self, data: bytes | memoryview, offset: int) -> int:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.001)
            in_flight -= 1
            return await super().write(data, offset)

    data = os.urandom(12 * BLOCK)
    handle = _Slow()
    assert await _pipeline(handle).write_all(chunked(data, [5 * BLOCK])) == len(data)
    assert most == 3
    assert b"".join(bytes(chunk) for _, chunk in sorted(handle.writes)) == data
