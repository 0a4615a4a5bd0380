"""The Redis idempotency store: keys shared by several server replicas.

A key is one hash ``<prefix>{<user tag>}:<digest of system, user, key>`` (fields
``body_hash``, ``job_id``, ``created`` and, for operators, ``system``, ``username``,
``key``) that expires ``ttl_hours`` after its creation, beside a *lease* ``…:lease``
naming the claim that is submitting it. Each user's live keys are also listed in a
sorted set ``<prefix>{<user tag>}:keys`` (scored by expiry, Redis's own clock), which
bounds them (``max_keys_per_user``). The user tag is a digest of system and user.
Every step is one Lua script, so claims are atomic across replicas (and a user's
keys share a hash slot, for Redis Cluster).

A claim of an absent key creates it pending and takes the lease: the caller submits
(``new``). A claim that finds the job, or another body, answers at once. A claim that
finds a pending key whose lease is held waits, polling with bounded backoff, until
the holder records the job (the answer), forgets the key (it claims anew) or lets the
lease lapse; then it takes the lease and answers the pending record, and the
submitter looks for the stamp in the scheduler before submitting again, as with
SQLite. The lease lasts ``redis_lease_seconds`` and is renewed while the claiming
task runs; when that task ends with the key still pending (outcome unknown) the lease
is dropped so that a retry need not wait, and when its server dies the lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid

from redis import asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from hpcgate import errors
from hpcgate.compute.idempotency import IdempotencyRecord, KeyQuota, KeyScope, quota_exceeded
from hpcgate.operations import redis_client
from hpcgate.operations.redis_client import redacted

log = logging.getLogger(__name__)

_POLL_FIRST = 0.02
_POLL_MAX = 0.5

_CLAIM = """
local rec = redis.call('HMGET', KEYS[1], 'body_hash', 'job_id', 'created')
if not rec[1] then
  local limit = tonumber(ARGV[9])
  if limit > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
    if redis.call('ZCARD', KEYS[3]) >= limit then
      local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
      return {'full', '', '', tostring(tonumber(oldest[2]) - now)}
    end
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), KEYS[1])
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
  end
  redis.call('HSET', KEYS[1], 'body_hash', ARGV[1], 'created', ARGV[2],
             'system', ARGV[6], 'username', ARGV[7], 'key', ARGV[8])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
  return {'new', ARGV[1], '', ARGV[2]}
end
local job = rec[2] or ''
if job ~= '' or rec[1] ~= ARGV[1] then
  return {'known', rec[1], job, rec[3]}
end
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[5]) then
  return {'taken', rec[1], '', rec[3]}
end
return {'wait', rec[1], '', rec[3]}
"""
_COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'job_id', ARGV[1])
end
redis.call('DEL', KEYS[2])
"""
_RELEASE = """
if redis.call('HEXISTS', KEYS[1], 'job_id') == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[3], KEYS[1])
end
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _unavailable(exc: RedisError) -> errors.ServiceUnavailable:
    log.warning("idempotency store (Redis) failed: %s", type(exc).__name__)
    return errors.ServiceUnavailable("The idempotency key store is unavailable; retry later")


class RedisIdempotencyStore:
    """Idempotency keys in Redis (``redis.asyncio``), shared by server replicas."""

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: float,
        lease_seconds: float = 15.0,
        prefix: str = "hpcgate:idem:",
    ) -> None:
        self._url = url
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._prefix = prefix
        self._redis: aioredis.Redis | None = None
        self._holds: set[asyncio.Task[None]] = set()
        self._claim: AsyncScript
        self._complete: AsyncScript
        self._release: AsyncScript
        self._renew: AsyncScript
        self._drop: AsyncScript

    async def open(self) -> None:
        client = await redis_client.connect(self._url, what="idempotency store")
        self._redis = client
        self._claim, self._complete, self._release, self._renew, self._drop = (
            client.register_script(lua) for lua in (_CLAIM, _COMPLETE, _RELEASE, _RENEW, _DROP)
        )
        log.info("idempotency keys in Redis at %s", redacted(self._url))

    def _user_tag(self, scope: KeyScope) -> str:
        material = json.dumps([scope.system, scope.username]).encode()
        return f"{self._prefix}{{{hashlib.sha256(material).hexdigest()[:40]}}}"

    def _keys(self, scope: KeyScope) -> list[str]:
        """The key's record and lease."""
        material = json.dumps([scope.system, scope.username, scope.key]).encode()
        record = f"{self._user_tag(scope)}:{hashlib.sha256(material).hexdigest()[:40]}"
        return [record, record + ":lease"]

    def _index(self, scope: KeyScope) -> str:
        """The sorted set of the user's live keys."""
        return f"{self._user_tag(scope)}:keys"

    async def claim(
        self, scope: KeyScope, body_hash: str, now: float, quota: KeyQuota | None = None
    ) -> IdempotencyRecord:
        keys = [*self._keys(scope), self._index(scope)]
        owner = uuid.uuid4().hex
        args: list[str | int | float] = [body_hash, repr(now), self._ttl_ms, owner, self._lease_ms]
        args += [scope.system, scope.username, scope.key, quota.max_keys if quota else 0]
        pause = _POLL_FIRST
        while True:
            try:
                state, digest, job_id, created = await self._claim(keys=keys, args=args)
            except RedisError as exc:
                raise _unavailable(exc) from exc
            if state == "full" and quota is not None:
                raise quota_exceeded(quota, float(created) / 1000)
            if state != "wait":
                break
            await asyncio.sleep(pause)  # another replica is submitting this key
            pause = min(pause * 1.5, _POLL_MAX)
        if state in ("new", "taken"):
            self._hold(keys[1], owner)
        return IdempotencyRecord(
            body_hash=digest, job_id=job_id or None, created=float(created), new=state == "new"
        )

    def _hold(self, lease: str, owner: str) -> None:
        """Keep the lease while the claiming task runs; drop it when that ends."""
        holder = asyncio.current_task()
        task = asyncio.create_task(self._keep(lease, owner, holder))
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)

    async def _keep(self, lease: str, owner: str, holder: asyncio.Task[object] | None) -> None:
        period = self._lease_ms / 3000
        try:
            while holder is not None and not holder.done():
                await asyncio.wait({holder}, timeout=period)
                if holder.done():
                    break
                if not await self._renew(keys=[lease], args=[owner, self._lease_ms]):
                    return  # completed or released: the lease is gone
            await self._drop(keys=[lease], args=[owner])
        except RedisError as exc:
            log.warning("idempotency lease not kept: %s", type(exc).__name__)

    async def complete(self, scope: KeyScope, job_id: str) -> None:
        try:
            await self._complete(keys=self._keys(scope), args=[job_id])
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def release(self, scope: KeyScope) -> None:
        try:
            await self._release(keys=[*self._keys(scope), self._index(scope)])
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def purge(self, older_than: float) -> int:
        """Nothing to do: Redis expires each key ``ttl_hours`` after its creation."""
        return 0

    async def close(self) -> None:
        for task in list(self._holds):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
