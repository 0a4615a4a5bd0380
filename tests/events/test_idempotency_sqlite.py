"""The SQLite idempotency store shared by two stores on one file (as the worker
processes of one ``hpcgate serve --workers N`` share it): a claim of a key the other
is submitting waits for its answer; one whose submitter ended without an answer, or
whose lease lapsed, takes the key over. The real-process test is
``tests/api/test_workers.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hpcgate.compute.idempotency import KeyScope, SqliteIdempotencyStore

SCOPE = KeyScope("c", "alice", "k1")


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteIdempotencyStore, ...]]:
    pair = tuple(SqliteIdempotencyStore(tmp_path / "i.sqlite3", lease_seconds=1.0) for _ in "ab")
    for store in pair:
        await store.open()
    yield pair
    for store in pair:
        await store.close()


async def test_a_claim_waits_for_the_other_stores_submission(stores) -> None:
    first, second = stores
    claimed = asyncio.Event()
    finish = asyncio.Event()

    async def submitter() -> None:
        record = await first.claim(SCOPE, "h", time.time())
        assert record.new and record.job_id is None
        claimed.set()
        await finish.wait()
        await first.complete(SCOPE, "42")

    task = asyncio.create_task(submitter())
    await claimed.wait()
    waiting = asyncio.create_task(second.claim(SCOPE, "h", time.time()))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # the lease is held (and renewed) while it submits
    finish.set()
    record = await asyncio.wait_for(waiting, 5)
    assert (record.job_id, record.new) == ("42", False)
    await task


async def test_a_key_left_pending_is_taken_over(stores) -> None:
    first, second = stores
    await asyncio.create_task(first.claim(SCOPE, "h", time.time()))  # its task ends: lease dropped
    await asyncio.sleep(0.1)
    record = await asyncio.wait_for(second.claim(SCOPE, "h", time.time()), 2)
    assert (record.job_id, record.new) == (None, False)  # pending: look for the stamp


async def test_another_body_answers_at_once(stores) -> None:
    first, second = stores
    claimed = asyncio.Event()

    async def holder() -> None:
        await first.claim(SCOPE, "h", time.time())
        claimed.set()
        await asyncio.sleep(2)

    task = asyncio.create_task(holder())
    await claimed.wait()
    record = await asyncio.wait_for(second.claim(SCOPE, "other", time.time()), 1)
    assert record.body_hash == "h"  # the submitter answers 422
    task.cancel()
