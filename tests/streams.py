"""Request bodies as they arrive: bytes cut into chunks of given sizes."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def chunked(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    """``data`` in chunks of ``sizes`` (repeated), the last one shorter."""
    at = index = 0
    while at < len(data):
        size = sizes[index % len(sizes)]
        yield data[at : at + size]
        at, index = at + size, index + 1
