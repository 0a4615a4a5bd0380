"""The one way the server connects to Redis: the state that replicas (and worker
processes) share lives there when configured (idempotency keys, transfer and upload
records, the job watcher's lease and round results).

Every client has the same bounded connect and read timeouts; a URL is logged only
without its password.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from redis import asyncio as aioredis
from redis.exceptions import RedisError

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0


def redacted(url: str) -> str:
    """``url`` without its password (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=user + host).geturl()


def client(url: str, *, blocking_reads: bool = False) -> aioredis.Redis:
    """A client of ``url`` (no connection yet). ``blocking_reads``: no read timeout,
    for a pub/sub listener that waits for messages with its own timeout."""
    return aioredis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=None if blocking_reads else READ_TIMEOUT_SECONDS,
    )


async def connect(url: str, *, what: str) -> aioredis.Redis:
    """A client of ``url`` that answered a ping; ``RuntimeError`` naming ``what`` (the
    store it is for) and the redacted URL otherwise, so the server refuses to start."""
    connected = client(url)
    try:
        await connected.ping()
    except RedisError as exc:
        await connected.aclose()
        raise RuntimeError(f"{what}: cannot reach Redis at {redacted(url)}: {exc}") from None
    return connected
