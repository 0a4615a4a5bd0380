"""The watcher's lease and round sharing in Redis (replicas; see ``lease``).

Keys, all under ``<prefix>{watcher:<system>}`` (one hash slot, for Redis Cluster):
``:lease`` (the leading replica's id, expiring after the lease), ``:interest:<replica>``
(a follower's ``Interest`` per scope as JSON with its generation, expiring after
three leases) and ``:replicas`` (a sorted set of the replicas that wrote interest,
scored by when it expires). Channels: ``:rounds`` (each round's ``RoundResult``) and
``:wake`` (a follower asks for an early round). The connection comes from the
idempotency store's ``redis_url`` (its password never logged).

Everything that fails against Redis is logged and retried each tick; meanwhile this
replica leads (polls for itself): one round per replica is worse than one in all,
but better than none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from hpcgate.compute.watcher.lease import WatcherPeer
from hpcgate.compute.watcher.results import RoundResult
from hpcgate.compute.watcher.shared import SharedCoordinator
from hpcgate.operations import redis_client
from hpcgate.operations.redis_client import redacted

_HOLD = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_GIVE_BACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_MAX_MESSAGE = 64 * 1024 * 1024  # a round of max_batch jobs is a few MB


class RedisCoordinator(SharedCoordinator):
    """One system's lease and round sharing through Redis."""

    store_errors = (RedisError,)

    def __init__(self, url: str, *, prefix: str, system: str, lease_seconds: float) -> None:
        super().__init__(system=system, lease_seconds=lease_seconds)
        self._url = url
        tag = f"{prefix}{{watcher:{system}}}"
        self._lease_key = f"{tag}:lease"
        self._replicas_key = f"{tag}:replicas"
        self._interest_prefix = f"{tag}:interest:"
        self._rounds = f"{tag}:rounds"
        self._wake = f"{tag}:wake"
        self._lease_ms = int(self._lease * 1000)
        self._redis: aioredis.Redis | None = None

    def _where(self) -> str:
        return redacted(self._url)

    # ------------------------------------------------------------ the watcher's side

    def start(self, peer: WatcherPeer) -> None:
        self._redis = redis_client.client(self._url)
        super().start(peer)

    async def close(self) -> None:
        await self._stop_tasks()
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.eval(_GIVE_BACK, 1, self._lease_key, self.replica)
                await self._redis.delete(self._interest_prefix + self.replica)
            await self._redis.aclose()
            self._redis = None

    async def share(self, result: RoundResult) -> None:
        if self._redis is None or self._down:
            return
        try:
            await self._redis.publish(self._rounds, result.to_json(self.replica))
        except RedisError as exc:
            self._failed(exc)

    # ------------------------------------------------------------ the store's side

    async def _hold(self) -> bool:
        assert self._redis is not None
        held = await self._redis.eval(_HOLD, 1, self._lease_key, self.replica, str(self._lease_ms))
        return bool(held)

    async def _publish(self, text: str, *, urgent: bool) -> None:
        assert self._redis is not None
        keep_ms = 3 * self._lease_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._interest_prefix + self.replica, text, px=keep_ms)
            pipe.zadd(self._replicas_key, {self.replica: int(time.time() * 1000) + keep_ms})
            pipe.pexpire(self._replicas_key, keep_ms)
            if urgent:
                pipe.publish(self._wake, self.replica)
            await pipe.execute()

    async def _interest_texts(self) -> list[tuple[str, str | bytes | None]]:
        redis = self._redis
        if redis is None:
            return []
        now_ms = int(time.time() * 1000)
        await redis.zremrangebyscore(self._replicas_key, "-inf", now_ms)
        replicas = [str(r) for r in await redis.zrange(self._replicas_key, 0, -1)]
        replicas = [r for r in replicas if r != self.replica]
        if not replicas:
            return []
        texts = await redis.mget([self._interest_prefix + r for r in replicas])
        return list(zip(replicas, texts, strict=True))

    async def _listen(self) -> None:
        """Apply the leader's rounds (while following); answer wake-ups (while leading)."""
        while True:
            client = redis_client.client(self._url, blocking_reads=True)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._rounds, self._wake)
                while True:
                    message = await pubsub.get_message(timeout=self._tick * 4)
                    if message is not None:
                        await self._received(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                self._failed(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            await asyncio.sleep(self._tick)

    async def _received(self, channel: str, data: str) -> None:
        if channel == self._wake:
            if data != self.replica:
                await self._woken()
        elif len(data) <= _MAX_MESSAGE:
            self._apply_round(data)
