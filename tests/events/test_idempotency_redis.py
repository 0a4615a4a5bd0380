"""The Redis idempotency store against a real (private) redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from redis import asyncio as aioredis

from hpcgate import errors
from hpcgate.compute.idempotency import (
    IdempotencyRecord,
    IdempotentSubmitter,
    KeyQuota,
    KeyScope,
    stamp,
)
from hpcgate.compute.idempotency_redis import RedisIdempotencyStore
from hpcgate.compute.scheduler.models import JobSubmitRequest
from hpcgate.config import ConfigError, IdempotencySettings, load_settings
from hpcgate.operations.redis_client import redacted

T = TypeVar("T")
StoreFactory = Callable[..., Awaitable[RedisIdempotencyStore]]
HOUR = 3600.0


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[StoreFactory]:
    """Opens stores on one fresh key prefix (each store: its own connections, like a
    replica); closes them after the test."""
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    opened: list[RedisIdempotencyStore] = []

    async def open_store(**kwargs: float) -> RedisIdempotencyStore:
        kwargs.setdefault("ttl_seconds", HOUR)
        store = RedisIdempotencyStore(redis_url, prefix=prefix, **kwargs)
        await store.open()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


def in_task(coro: Awaitable[T]) -> asyncio.Task[T]:
    """Run ``coro`` as its own task: a claim's lease lives as long as its task."""

    async def run() -> T:
        return await coro

    return asyncio.create_task(run())


def request(name: str) -> JobSubmitRequest:
    return JobSubmitRequest.model_validate(
        {"job": {"name": name, "workingDirectory": "/w", "script": "#!/bin/bash\ntrue\n"}}
    )


SCOPE = KeyScope("c", "alice", "key-1")


async def test_claim_complete_replay_release(stores: StoreFactory) -> None:
    store = await stores()

    async def first() -> IdempotencyRecord:
        record = await store.claim(SCOPE, "h1", 1000.5)
        await store.complete(SCOPE, "42")
        return record

    record = await in_task(first())
    assert (record.new, record.job_id, record.body_hash, record.created) == (
        True,
        None,
        "h1",
        1000.5,
    )
    replay = await in_task(store.claim(SCOPE, "h1", 2000.0))
    assert (replay.new, replay.job_id, replay.created) == (False, "42", 1000.5)
    other = await in_task(store.claim(SCOPE, "h2", 2000.0))
    assert (other.body_hash, other.job_id) == ("h1", "42")  # the submitter's 422
    await store.release(SCOPE)  # a completed key is never forgotten
    assert (await in_task(store.claim(SCOPE, "h1", 0))).job_id == "42"
    # a pending key is
    scope = KeyScope("c", "alice", "key-2")
    assert (await in_task(store.claim(scope, "h1", 0))).new
    await store.release(scope)
    again = await in_task(store.claim(scope, "h2", 0))
    assert (again.new, again.body_hash) == (True, "h2")


async def test_keys_are_scoped_per_system_and_user(stores: StoreFactory) -> None:
    store = await stores()
    scopes = [SCOPE, KeyScope("c", "bob", "key-1"), KeyScope("d", "alice", "key-1")]
    for i, scope in enumerate(scopes):
        assert (await in_task(store.claim(scope, f"h{i}", 0))).new
        await store.complete(scope, str(i))
    for i, scope in enumerate(scopes):
        assert (await in_task(store.claim(scope, "x", 0))).job_id == str(i)


async def test_keys_expire_after_ttl(stores: StoreFactory, redis_url: str) -> None:
    store = await stores(ttl_seconds=0.5)
    assert (await in_task(store.claim(SCOPE, "h", 0))).new
    await store.complete(SCOPE, "7")
    client = aioredis.from_url(redis_url)
    try:
        [record, _] = store._keys(SCOPE)
        assert 0 < await client.pttl(record) <= 500  # completing does not extend it
    finally:
        await client.aclose()
    await asyncio.sleep(0.7)
    assert (await in_task(store.claim(SCOPE, "h", 0))).new
    assert await store.purge(time.time()) == 0  # Redis expires keys itself
    # the configured ttl_hours reaches the store
    hours = await stores(ttl_seconds=IdempotencySettings().ttl_hours * HOUR)
    assert hours._ttl_ms == 168 * 3600 * 1000


async def test_live_keys_are_capped_per_user(stores: StoreFactory, redis_url: str) -> None:
    """A user holds at most ``max_keys`` live keys across replicas: the next new key
    is a 429 with Retry-After (when their oldest expires); known keys still answer,
    other users and systems are not affected, and forgotten or expired keys free
    their place."""
    replicas = [await stores(ttl_seconds=1.5), await stores(ttl_seconds=1.5)]
    quota = KeyQuota(max_keys=3, ttl=1.5)
    alice = [KeyScope("c", "alice", f"k{i}") for i in range(5)]
    for i, scope in enumerate(alice[:3]):
        assert (await in_task(replicas[i % 2].claim(scope, "h", time.time(), quota))).new
        await replicas[i % 2].complete(scope, str(i))
    for store in replicas:
        with pytest.raises(errors.TooManyRequests) as caught:
            await in_task(store.claim(alice[3], "h", time.time(), quota))
        assert 1 <= int(caught.value.headers["Retry-After"]) <= 2
        assert "max_keys_per_user" in caught.value.message
    assert (await in_task(replicas[1].claim(alice[0], "h", time.time(), quota))).job_id == "0"
    for other in (KeyScope("c", "bob", "k0"), KeyScope("d", "alice", "k0")):
        assert (await in_task(replicas[0].claim(other, "h", time.time(), quota))).new
    # without a quota (the submitter always passes one) nothing is counted
    assert (await in_task(replicas[0].claim(alice[4], "h", time.time()))).new
    await replicas[0].release(alice[4])
    client = aioredis.from_url(redis_url)
    try:
        index = replicas[0]._index(alice[0])
        assert await client.zcard(index) == 3
        assert 0 < await client.pttl(index) <= 1500
        [record, _] = replicas[0]._keys(alice[0])
        assert index.split("}")[0] == record.split("}")[0]  # one hash slot per user
    finally:
        await client.aclose()
    await asyncio.sleep(1.6)  # all three expired
    for scope in alice[3:5]:
        assert (await in_task(replicas[0].claim(scope, "h", time.time(), quota))).new
    await replicas[0].release(alice[4])  # a pending key forgotten frees its place
    assert (await in_task(replicas[1].claim(alice[0], "h", time.time(), quota))).new
    assert (await in_task(replicas[1].claim(alice[1], "h", time.time(), quota))).new
    with pytest.raises(errors.TooManyRequests):
        await in_task(replicas[1].claim(alice[2], "h", time.time(), quota))


async def test_submitter_passes_the_quota(stores: StoreFactory) -> None:
    submitter = IdempotentSubmitter(await stores(), IdempotencySettings(max_keys_per_user=1))
    stamped: dict[str, str] = {}

    async def submit(comment: str) -> str:
        stamped[comment] = str(2000 + len(stamped))
        return stamped[comment]

    async def lookup(comment: str, since: int) -> list[str]:
        return [stamped[comment]] if comment in stamped else []

    assert await submitter.submit(SCOPE, request("a"), submit, lookup) == ("2000", False)
    with pytest.raises(errors.TooManyRequests):
        await submitter.submit(KeyScope("c", "alice", "other"), request("a"), submit, lookup)
    assert await submitter.submit(SCOPE, request("a"), submit, lookup) == ("2000", True)
    assert stamped == {stamp(SCOPE): "2000"}


async def test_fifty_concurrent_claims_across_replicas_one_winner(
    stores: StoreFactory,
) -> None:
    """Two stores (as two replicas) race on one key: one claim wins and submits; the
    others wait for its job instead of submitting."""
    replicas = [await stores(), await stores()]
    submitted: list[str] = []

    async def attempt(i: int) -> IdempotencyRecord:
        store = replicas[i % 2]
        record = await store.claim(SCOPE, "h", time.time())
        if record.new:
            await asyncio.sleep(0.3)  # sbatch
            submitted.append(f"job-{i}")
            await store.complete(SCOPE, submitted[-1])
        return record

    records = await asyncio.gather(*(in_task(attempt(i)) for i in range(50)))
    assert len(submitted) == 1
    assert sum(r.new for r in records) == 1
    assert {r.job_id for r in records if not r.new} == {submitted[0]}


async def test_waiter_takes_over_when_the_owner_ends_without_an_answer(
    stores: StoreFactory,
) -> None:
    """sbatch's outcome was unknown: the lease is dropped when the owner's task ends,
    so a retry at once gets the pending record (and looks for the stamp)."""
    a, b = await stores(), await stores()
    assert (await in_task(a.claim(SCOPE, "h", 5.0))).new
    started = time.monotonic()
    record = await in_task(b.claim(SCOPE, "h", 9.0))
    assert (record.new, record.job_id, record.created) == (False, None, 5.0)
    assert time.monotonic() - started < 1


async def test_waiter_takes_over_when_the_owner_dies(stores: StoreFactory) -> None:
    """The owner's server dies mid-submission: its lease lapses, then a waiting
    replica takes the key over (pending, not new)."""
    a, b = await stores(lease_seconds=1.0), await stores(lease_seconds=1.0)
    owner_claimed = asyncio.Event()
    release_owner = asyncio.Event()

    async def owner() -> None:
        assert (await a.claim(SCOPE, "h", 5.0)).new
        owner_claimed.set()
        await release_owner.wait()  # sbatch hangs...

    task = asyncio.create_task(owner())
    await owner_claimed.wait()
    started = time.monotonic()
    waiter = in_task(b.claim(SCOPE, "h", 9.0))
    await asyncio.sleep(1.5)
    assert not waiter.done()  # the lease is renewed while the owner runs
    await a.close()  # ...and the server dies: nobody renews the lease
    record = await waiter
    assert (record.new, record.job_id) == (False, None)
    assert 1.5 < time.monotonic() - started < 4
    release_owner.set()
    await task


async def test_submitter_on_redis(stores: StoreFactory) -> None:
    """The submitter's semantics hold on Redis: one job, replay, 422, forget on 4xx."""
    settings = IdempotencySettings()
    submitters = [IdempotentSubmitter(await stores(), settings) for _ in range(2)]
    submitted: list[str] = []
    stamped: dict[str, str] = {}

    async def submit(comment: str) -> str:
        await asyncio.sleep(0.2)
        submitted.append(str(1000 + len(submitted)))
        stamped[comment] = submitted[-1]
        return submitted[-1]

    async def lookup(comment: str, since: int) -> list[str]:
        return [stamped[comment]] if comment in stamped else []

    answers = await asyncio.gather(
        *(submitters[i % 2].submit(SCOPE, request("a"), submit, lookup) for i in range(10))
    )
    assert {job_id for job_id, _ in answers} == {"1000"}
    assert sum(not replayed for _, replayed in answers) == 1
    assert submitted == ["1000"]
    with pytest.raises(errors.UnprocessableEntity):
        await submitters[1].submit(SCOPE, request("b"), submit, lookup)

    async def rejected(comment: str) -> str:
        raise errors.BadRequest("Job submission rejected")

    scope = KeyScope("c", "alice", "key-2")
    with pytest.raises(errors.BadRequest):
        await submitters[0].submit(scope, request("a"), rejected, lookup)
    # forgotten: another body may use the key now
    assert await submitters[1].submit(scope, request("b"), submit, lookup) == ("1001", False)


async def test_unreachable_redis(redis_url: str) -> None:
    store = RedisIdempotencyStore("redis://:s3cret@127.0.0.1:1/0", ttl_seconds=HOUR)
    with pytest.raises(RuntimeError) as failure:
        await store.open()
    assert "s3cret" not in str(failure.value) and "***" in str(failure.value)


def test_config(tmp_path: Path) -> None:
    assert redacted("redis://u:pw@h:6379/1") == "redis://u:***@h:6379/1"
    assert redacted("rediss://:pw@h/0") == "rediss://:***@h/0"
    assert redacted("redis://h:6379") == "redis://h:6379"
    settings = IdempotencySettings(backend="redis", redis_url="redis://:pw@h:1/0")
    assert "pw" not in repr(settings) and "pw" not in str(settings.model_dump())
    base = {
        "auth": {"issuer": "https://i", "audience": "a", "jwks_url": "https://i/jwks"},
        "systems": [
            {
                "name": "c",
                "ssh": {"host": "h", "known_hosts": "/k"},
                "credentials": {"kind": "static_keys", "key_path": "/k/{username}"},
            }
        ],
    }
    path = tmp_path / "hpcgate.yaml"
    for idempotency, message in [
        ({"backend": "redis"}, "backend redis needs redis_url"),
        ({"backend": "redis", "redis_url": "http://:pw@h"}, "redis://, rediss:// or unix://"),
        ({"backend": "memcached"}, "idempotency.backend"),
    ]:
        path.write_text(yaml.safe_dump({**base, "idempotency": idempotency}))
        with pytest.raises(ConfigError) as failure:
            load_settings(path)
        assert message in str(failure.value) and ":pw@" not in str(failure.value)
    path.write_text(
        yaml.safe_dump(
            {**base, "idempotency": {"backend": "redis", "redis_url": "redis://:pw@h:1/0"}}
        )
    )
    loaded = load_settings(path).idempotency
    assert loaded.redis_url is not None
    assert loaded.redis_url.get_secret_value() == "redis://:pw@h:1/0"
