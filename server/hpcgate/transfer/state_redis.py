"""Transfer state in Redis: server replicas behind one URL serve the same transfers.

The connection is the idempotency store's (``idempotency.redis_url``): one Redis per
deployment. Keys (all under ``transfer.redis_key_prefix`` and one hash tag, so that
every script's keys share a slot, for Redis Cluster too):

* ``t:<id>`` a hash, one JSON value per record field; ``t:<id>:parts`` (number ->
  "size etag") and ``t:<id>:claims`` (slot -> "holder instance"), all three expiring
  a day after the transfer;
* ``g:<digest of system, user, uploads|downloads>`` a sorted set of live transfers
  by expiry (the per-user quota); ``expiry`` (all by expiry) and ``creating`` (those
  still being created), for the reaper;
* ``i:<instance>`` ("host pid beat") expiring ``stale`` seconds after its last beat,
  listed in ``instances``.

Every step that reads and then writes is one Lua script: atomic across replicas.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Sequence
from typing import Any

from redis import asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from hpcgate import errors
from hpcgate.operations import redis_client
from hpcgate.operations.redis_client import redacted
from hpcgate.transfer.state import ClaimResult, Instance, Parts, Record, group_of

log = logging.getLogger(__name__)

_GRACE_MS = 86_400_000  # records stay a day past their expiry if nobody reaps them

_INSERT = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
local held = redis.call('ZCARD', KEYS[2])
if held >= tonumber(ARGV[1]) then return held end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] == 'creating' then redis.call('SADD', KEYS[4], ARGV[4]) end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
return -1
"""
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] ~= '' then
  if ARGV[2] ~= 'creating' then redis.call('SREM', KEYS[3], ARGV[1]) end
  if ARGV[2] ~= 'creating' and ARGV[2] ~= 'open' then redis.call('ZREM', KEYS[2], ARGV[1]) end
end
return 1
"""
_SET_PART = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""
_DELETE = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
"""
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if ARGV[4] == '1' and state ~= '"open"' then return 'closed' end
local n = tonumber(ARGV[6])
local dead = {}
for i = 7, 6 + n do dead[ARGV[i]] = true end
local blockers = {}
for i = 7 + n, #ARGV do blockers[#blockers + 1] = ARGV[i] end
local held = redis.call('HGETALL', KEYS[2])
for i = 1, #held, 2 do
  local slot, value = held[i], held[i + 1]
  local sep = string.find(value, ' ', 1, true)
  local holder = string.sub(value, 1, sep - 1)
  local instance = string.sub(value, sep + 1)
  if dead[instance] or redis.call('EXISTS', ARGV[5] .. instance) == 0 then
    redis.call('HDEL', KEYS[2], slot)
  elseif holder ~= ARGV[2] then
    for _, b in ipairs(blockers) do
      if slot == b or (string.sub(b, -1) == ':' and string.sub(slot, 1, #b) == b) then
        return 'busy:' .. slot
      end
    end
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
redis.call('PEXPIRE', KEYS[2], math.max(redis.call('PTTL', KEYS[1]), 1000))
return 'ok'
"""
_RELEASE = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and string.sub(value, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
"""


def _unavailable(exc: RedisError) -> errors.ServiceUnavailable:
    log.warning("transfer state (Redis) failed: %s", type(exc).__name__)
    return errors.ServiceUnavailable("The transfer state store is unavailable; retry later")


class RedisTransferState:
    """``StateBackend`` in Redis (``redis.asyncio``), shared by server replicas."""

    def __init__(self, url: str, *, prefix: str = "hpcgate:xfer:") -> None:
        self._url = url
        self._base = f"{prefix}{{t}}:"
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    @property
    def _r(self) -> aioredis.Redis:
        assert self._redis is not None, "transfer state not open"
        return self._redis

    async def open(self) -> None:
        client = await redis_client.connect(self._url, what="transfer state")
        self._redis = client
        scripts = {"insert": _INSERT, "update": _UPDATE, "set_part": _SET_PART}
        scripts |= {"delete": _DELETE, "claim": _CLAIM, "release": _RELEASE}
        self._scripts = {name: client.register_script(lua) for name, lua in scripts.items()}
        log.info("transfer state in Redis at %s", redacted(self._url))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._scripts[name](keys=keys, args=args)
        except RedisError as exc:
            raise _unavailable(exc) from exc

    def _record_keys(self, transfer_id: str) -> list[str]:
        record = f"{self._base}t:{transfer_id}"
        return [record, record + ":parts", record + ":claims"]

    def _group(self, record: Record) -> str:
        digest = hashlib.sha256(group_of(record).encode()).hexdigest()[:40]
        return f"{self._base}g:{digest}"

    # -- instances -----------------------------------------------------------------------

    async def beat(self, instance: Instance, stale: float) -> None:
        value = f"{instance.host} {instance.pid} {instance.beat!r}"
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.set(f"{self._base}i:{instance.id}", value, px=int(stale * 1000))
                pipe.sadd(f"{self._base}instances", instance.id)
                await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def retire(self, instance: Instance) -> None:
        try:
            await self._r.delete(f"{self._base}i:{instance.id}")
            await self._r.srem(f"{self._base}instances", instance.id)
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def instances(self) -> list[Instance]:
        try:
            # decode_responses: str throughout
            ids = sorted(str(i) for i in await self._r.smembers(f"{self._base}instances"))
            got = await self._r.mget([f"{self._base}i:{i}" for i in ids]) if ids else []
            values = [None if value is None else str(value) for value in got]
            gone = [i for i, value in zip(ids, values, strict=True) if value is None]
            if gone:
                await self._r.srem(f"{self._base}instances", *gone)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        found = []
        for instance_id, value in zip(ids, values, strict=True):
            if value is not None:
                host, pid, beat = value.rsplit(" ", 2)
                found.append(Instance(instance_id, host, int(pid), float(beat)))
        return found

    # -- records -----------------------------------------------------------------------

    async def insert(self, record: Record, *, limit: int, now: float) -> int | None:
        keys = self._record_keys(record["id"])[:1]
        keys += [self._group(record), f"{self._base}expiry", f"{self._base}creating"]
        until = int(record["expires_at"] * 1000) + _GRACE_MS
        args: list[Any] = [limit, repr(now), repr(record["expires_at"]), record["id"]]
        args += [record["state"], until]
        for name, value in record.items():
            args += [name, json.dumps(value)]
        held = int(await self._run("insert", keys, args))
        return None if held < 0 else held

    async def load(self, transfer_id: str) -> tuple[Record, Parts] | None:
        record_key, parts_key, _ = self._record_keys(transfer_id)
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hgetall(record_key)
                pipe.hgetall(parts_key)
                fields, parts = await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from exc
        if not fields:
            return None
        record = {name: json.loads(value) for name, value in fields.items()}
        found: Parts = {}
        for number, value in parts.items():
            size, etag = value.split(" ", 1)
            found[int(number)] = (int(size), etag)
        return record, found

    async def update(self, transfer_id: str, fields: Record) -> None:
        keys = self._record_keys(transfer_id)[:1]
        state = str(fields.get("state", ""))
        if state:
            loaded = await self.load(transfer_id)
            if loaded is None:
                return
            keys.append(self._group(loaded[0]))
        else:
            keys.append(f"{self._base}g:none")
        keys.append(f"{self._base}creating")
        args: list[Any] = [transfer_id, state]
        for name, value in fields.items():
            args += [name, json.dumps(value)]
        await self._run("update", keys, args)

    async def set_part(self, transfer_id: str, number: int, size: int, etag: str) -> None:
        keys = self._record_keys(transfer_id)[:2]
        await self._run("set_part", keys, [number, f"{size} {etag}"])

    async def delete(self, transfer_id: str) -> None:
        loaded = await self.load(transfer_id)
        group = self._group(loaded[0]) if loaded else f"{self._base}g:none"
        keys = [*self._record_keys(transfer_id), group]
        keys += [f"{self._base}expiry", f"{self._base}creating"]
        await self._run("delete", keys, [transfer_id])

    # -- claims ------------------------------------------------------------------------

    async def claim(
        self,
        transfer_id: str,
        slot: str,
        holder: str,
        instance: str,
        *,
        blockers: Sequence[str],
        open_only: bool,
        dead: Collection[str],
    ) -> ClaimResult:
        record_key, _, claims_key = self._record_keys(transfer_id)
        args: list[Any] = [slot, holder, instance, "1" if open_only else "0"]
        args += [f"{self._base}i:", len(dead), *dead, *blockers]
        return str(await self._run("claim", [record_key, claims_key], args))

    async def release(self, transfer_id: str, slot: str, holder: str) -> None:
        await self._run("release", self._record_keys(transfer_id)[2:], [slot, holder])

    async def due(self, now: float, limit: int) -> list[Record]:
        try:
            expired = await self._r.zrangebyscore(
                f"{self._base}expiry", "-inf", f"({now!r}", start=0, num=limit
            )
            creating = await self._r.srandmember(f"{self._base}creating", limit)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        found = []
        for transfer_id in [*expired, *(creating or [])]:
            loaded = await self.load(transfer_id)
            if loaded is None:  # expired away in Redis: forget its index entries
                await self.delete(transfer_id)
            else:
                found.append(loaded[0])
        return found
