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
import json
import logging
import time
import uuid

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from hpcgate.compute.watcher.lease import (
    Interest,
    RemoteInterest,
    WatcherPeer,
    interest_from_json,
    interest_json,
    merge_interests,
)
from hpcgate.compute.watcher.results import RoundResult
from hpcgate.operations import redis_client
from hpcgate.operations.redis_client import redacted

log = logging.getLogger(__name__)

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


class RedisCoordinator:
    """One system's lease and round sharing through Redis."""

    def __init__(self, url: str, *, prefix: str, system: str, lease_seconds: float) -> None:
        self.replica = uuid.uuid4().hex
        self._url = url
        tag = f"{prefix}{{watcher:{system}}}"
        self._lease_key = f"{tag}:lease"
        self._replicas_key = f"{tag}:replicas"
        self._interest_prefix = f"{tag}:interest:"
        self._rounds = f"{tag}:rounds"
        self._wake = f"{tag}:wake"
        self._system = system
        self._lease_ms = max(1000, int(lease_seconds * 1000))
        self._tick = lease_seconds / 4
        self._leading = True  # until the store says otherwise
        self._gen = 0
        self._dirty = True
        self._urgent = False
        self._poke = asyncio.Event()
        self._peer: WatcherPeer | None = None
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._down = False

    # ------------------------------------------------------------ the watcher's side

    def leads(self) -> bool:
        return self._leading

    def start(self, peer: WatcherPeer) -> None:
        self._peer = peer
        self._redis = redis_client.client(self._url)
        self._tasks = [
            asyncio.create_task(self._keep(), name=f"watcher-lease-{self._system}"),
            asyncio.create_task(self._listen(), name=f"watcher-share-{self._system}"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.eval(_GIVE_BACK, 1, self._lease_key, self.replica)
                await self._redis.delete(self._interest_prefix + self.replica)
            await self._redis.aclose()
            self._redis = None

    def interest_changed(self, *, urgent: bool) -> int:
        self._dirty = True
        self._urgent = self._urgent or urgent
        self._poke.set()
        return self._gen + 1

    async def remote_interest(self) -> RemoteInterest:
        redis = self._redis
        remote = RemoteInterest()
        if redis is None or self._down:
            return remote
        try:
            now_ms = int(time.time() * 1000)
            await redis.zremrangebyscore(self._replicas_key, "-inf", now_ms)
            replicas = [str(r) for r in await redis.zrange(self._replicas_key, 0, -1)]
            replicas = [r for r in replicas if r != self.replica]
            if not replicas:
                return remote
            texts = await redis.mget([self._interest_prefix + r for r in replicas])
        except RedisError as exc:
            self._failed(exc)
            return remote
        found: dict[str, list[Interest]] = {}
        for replica, text in zip(replicas, texts, strict=True):
            if text is None:
                continue
            try:
                raw = json.loads(text)
                gen = int(raw["gen"])
                scopes = [
                    (str(name), interest_from_json(scope)) for name, scope in raw["scopes"].items()
                ]
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("watcher: malformed interest of replica %s ignored", replica)
                continue
            remote.gens[replica] = gen
            for name, interest in scopes:
                found.setdefault(name, []).append(interest)
        remote.scopes = {name: merge_interests(interests) for name, interests in found.items()}
        return remote

    async def share(self, result: RoundResult) -> None:
        if self._redis is None or self._down:
            return
        try:
            await self._redis.publish(self._rounds, result.to_json(self.replica))
        except RedisError as exc:
            self._failed(exc)

    # ------------------------------------------------------------ internals

    def _failed(self, exc: Exception) -> None:
        if not self._down:
            log.warning(
                "watcher: the shared store at %s failed (%s): this replica polls for itself",
                redacted(self._url),
                type(exc).__name__,
            )
        self._down = True
        self._set_leading(True)

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info(
                "watcher: %s the round lease of %s",
                "took" if leading else "follows; another replica holds",
                self._system,
            )
            if self._peer is not None:
                self._peer.leadership_changed()

    async def _keep(self) -> None:
        """Hold or seek the lease every tick; publish this replica's interest while
        following, read the others' while leading."""
        assert self._redis is not None and self._peer is not None
        while True:
            try:
                held = await self._redis.eval(
                    _HOLD, 1, self._lease_key, self.replica, str(self._lease_ms)
                )
                if self._down:
                    log.info("watcher: the shared store is back")
                    self._down = False
                self._set_leading(bool(held))
                if self._leading:
                    self._peer.set_remote(await self.remote_interest(), set())
                else:
                    await self._publish_interest()
            except RedisError as exc:
                self._failed(exc)
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick):
                    await self._poke.wait()

    async def _publish_interest(self) -> None:
        assert self._redis is not None and self._peer is not None
        self._dirty = False
        self._gen += 1
        urgent, self._urgent = self._urgent, False
        scopes = {name: interest_json(i) for name, i in self._peer.local_interest().items()}
        text = json.dumps({"gen": self._gen, "scopes": scopes}, separators=(",", ":"))
        keep_ms = 3 * self._lease_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._interest_prefix + self.replica, text, px=keep_ms)
            pipe.zadd(self._replicas_key, {self.replica: int(time.time() * 1000) + keep_ms})
            pipe.pexpire(self._replicas_key, keep_ms)
            if urgent:
                pipe.publish(self._wake, self.replica)
            await pipe.execute()

    async def _listen(self) -> None:
        """Apply the leader's rounds (while following); answer wake-ups (while leading)."""
        assert self._peer is not None
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
        assert self._peer is not None
        if channel == self._wake:
            if self._leading and data != self.replica:
                self._peer.set_remote(await self.remote_interest(), {"*"})
            return
        if self._leading or len(data) > _MAX_MESSAGE:
            return
        try:
            sender, result = RoundResult.from_json(data)
        except ValueError as exc:
            log.warning("watcher: malformed round result ignored: %s", str(exc)[:200])
            return
        if sender != self.replica:
            self._peer.apply_remote(result)
