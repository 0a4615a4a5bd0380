"""Upload bodies regrouped into batches of one exact size, each joined once.

A body arrives in HTTP chunks of about 256 KiB, a little more than one SFTP write
(OpenSSH takes 255 KiB), so writing them as they come means joining every block from
two chunks. A part's MD5 is hashed in ~1 MiB batches (one ``update``, one thread hop),
which joins the same bytes again. Batches of exactly ``BATCH`` bytes, a multiple of
OpenSSH's write size, are joined once: the hash reads them and ``WritePipeline`` sends
them as views, without copying them again.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

#: four of OpenSSH's largest SFTP writes (255 KiB): ~1 MiB per join, hash and thread hop
BATCH = 4 * 255 * 1024


async def batches(chunks: AsyncIterable[bytes], size: int = BATCH) -> AsyncIterator[bytes]:
    """``chunks`` regrouped into batches of exactly ``size`` bytes (the last shorter).

    Holds less than one batch and one chunk; the bytes of a batch are copied once (not
    at all when one chunk is exactly a batch).
    """
    pieces: list[memoryview] = []
    buffered = 0
    async for chunk in chunks:
        view = memoryview(chunk)
        while buffered + len(view) >= size:
            take = size - buffered
            if not pieces and take == len(view) == len(chunk):
                yield chunk  # exactly one batch: as it is
            else:
                pieces.append(view[:take])
                yield b"".join(pieces)
                pieces.clear()
            buffered = 0
            view = view[take:]
        if view:
            pieces.append(view)
            buffered += len(view)
    if pieces:
        yield b"".join(pieces)
