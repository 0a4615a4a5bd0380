"""Exactly-once job submission with an ``Idempotency-Key`` header.

A key is scoped to (system, user). The first request with a key records
``key → (body hash, pending)`` in the store *before* sbatch runs, stamps the job
with ``--comment=hpcgate-idem:<digest of system, user and key>`` and records the job
id once sbatch answers. The submission runs in its own task, shielded from the
request: a client that disconnects (or times out) after sbatch does not stop the id
from being recorded.

A later request with the same key and body returns the recorded job (201, the same
body, ``Idempotent-Replayed: true``); with another body it is a 422. A request that
finds a *pending* record (the server died or sbatch's answer was lost) first asks
the scheduler for a job carrying the stamp (squeue for jobs the controller holds,
sacct when the site stores comments: ``AccountingStoreFlags=job_comment``) and
submits again only if there is none. Concurrent requests with one key share one
submission. A submission that sbatch rejected (4xx) forgets its key; one whose
outcome is unknown (timeout, lost connection, 5xx) keeps it pending.

The store is SQLite by default (one file, WAL, writes on a dedicated thread). The
worker processes of one ``hpcgate serve --workers N`` share that file; replicas on
several hosts share a Redis store (``hpcgate.compute.idempotency_redis``) behind the
same ``IdempotencyStore`` interface. With either, a claim of a key another process is
submitting waits for that process's answer: the claim that submits holds a *lease* on
the key (renewed while its task runs, dropped when it ends, lapsing if its process
dies; with SQLite a holder whose process id is gone counts for nothing at once).

Records are bounded per user: one user holds at most ``max_keys_per_user`` live
(unexpired) keys on a system; a new key beyond that is a 429 whose ``Retry-After``
says when the user's oldest key expires. Known keys still replay, and other users
are not affected.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from hpcgate import errors
from hpcgate.compute.scheduler.models import JobSubmitRequest
from hpcgate.config import IdempotencySettings
from hpcgate.operations.local_state import pid_alive
from hpcgate.operations.metrics import Metrics, command_source

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
STAMP_PREFIX = "hpcgate-idem:"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_LOOKUP_SLACK_SECONDS = 120
_POLL_FIRST = 0.02  # a claim waiting for another process's submission
_POLL_MAX = 0.5

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KeyScope:
    system: str
    username: str
    key: str


@dataclass(frozen=True, slots=True)
class KeyQuota:
    """At most ``max_keys`` live keys per (system, user); a key lives ``ttl`` seconds."""

    max_keys: int
    ttl: float


def quota_exceeded(quota: KeyQuota, seconds_left: float) -> errors.TooManyRequests:
    """The 429 for a user at ``quota``, whose oldest key expires in ``seconds_left``."""
    return errors.TooManyRequests(
        f"You hold {quota.max_keys} live {HEADER} keys on this system, the most allowed "
        "(idempotency.max_keys_per_user); reuse a key, or retry once the oldest expires",
        retry_after=max(1, math.ceil(seconds_left)),
    )


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What the store knows of a key: the body's hash and, once known, the job."""

    body_hash: str
    job_id: str | None
    created: float
    new: bool = False
    """Created by this claim (no earlier attempt)."""


class IdempotencyStore(Protocol):
    """Where keys live; every method is atomic."""

    async def open(self) -> None: ...

    async def claim(
        self, scope: KeyScope, body_hash: str, now: float, quota: KeyQuota | None = None
    ) -> IdempotencyRecord:
        """The key's record, creating a pending one (``job_id`` None) if absent;
        ``TooManyRequests`` instead of creating one beyond ``quota``."""
        ...

    async def complete(self, scope: KeyScope, job_id: str) -> None: ...

    async def release(self, scope: KeyScope) -> None:
        """Forget a pending key (its submission certainly failed)."""
        ...

    async def purge(self, older_than: float) -> int: ...

    async def close(self) -> None: ...


def validate_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise errors.BadRequest(
            f"Invalid {HEADER}: 1 to 255 printable ASCII characters without spaces"
        )
    return key


def body_hash(body: JobSubmitRequest) -> str:
    """A digest of the request's meaning (camelCase and snake_case bodies agree)."""
    canonical = json.dumps(
        body.model_dump(mode="json", by_alias=False), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def stamp(scope: KeyScope) -> str:
    """The job comment of a key: not the key itself (comments are visible to others)."""
    material = f"{scope.system.lower()}\n{scope.username}\n{scope.key}".encode()
    return STAMP_PREFIX + hashlib.sha256(material).hexdigest()[:40]


class SqliteIdempotencyStore:
    """The default store: one SQLite file, accessed from one dedicated thread; shared by
    the worker processes of one host (``BEGIN IMMEDIATE`` makes each claim atomic
    across them, a lease row per pending key makes the others wait)."""

    def __init__(self, path: Path, *, lease_seconds: float = 15.0) -> None:
        self.path = path
        self._lease = lease_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idempotency")
        self._conn: sqlite3.Connection | None = None
        self._holds: set[asyncio.Task[None]] = set()
        self._held: dict[KeyScope, str] = {}  # the owner of each lease this store holds

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._conn is not None, "store not open"
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS idempotency ("
                " system TEXT NOT NULL, username TEXT NOT NULL, key TEXT NOT NULL,"
                " body_hash TEXT NOT NULL, job_id TEXT, created REAL NOT NULL,"
                " PRIMARY KEY (system, username, key))"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency(created)")
            conn.execute(
                "CREATE INDEX IF NOT EXISTS idempotency_user"
                " ON idempotency(system, username, created)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS idempotency_lease ("
                " system TEXT NOT NULL, username TEXT NOT NULL, key TEXT NOT NULL,"
                " owner TEXT NOT NULL, pid INTEGER NOT NULL, until REAL NOT NULL,"
                " PRIMARY KEY (system, username, key))"
            )
            self._conn = conn

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def claim(
        self, scope: KeyScope, body_hash: str, now: float, quota: KeyQuota | None = None
    ) -> IdempotencyRecord:
        owner = uuid.uuid4().hex
        where = (scope.system, scope.username, scope.key)
        # a lease of this store's own: in one process the submitter coordinates
        mine = frozenset(self._held.values())

        def claim(conn: sqlite3.Connection) -> IdempotencyRecord | None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT body_hash, job_id, created FROM idempotency"
                    " WHERE system = ? AND username = ? AND key = ?",
                    where,
                ).fetchone()
                new = row is None
                if new and quota is not None:
                    held, oldest = conn.execute(
                        "SELECT COUNT(*), MIN(created) FROM idempotency"
                        " WHERE system = ? AND username = ? AND created >= ?",
                        (scope.system, scope.username, now - quota.ttl),
                    ).fetchone()
                    if held >= quota.max_keys:
                        raise quota_exceeded(quota, oldest + quota.ttl - now)
                if new:
                    conn.execute(
                        "INSERT INTO idempotency VALUES (?, ?, ?, ?, NULL, ?)",
                        (*where, body_hash, now),
                    )
                    row = (body_hash, None, now)
                elif row[1] is None and row[0] == body_hash:  # pending: who submits it?
                    lease = conn.execute(
                        "SELECT owner, pid, until FROM idempotency_lease"
                        " WHERE system = ? AND username = ? AND key = ?",
                        where,
                    ).fetchone()
                    if (
                        lease is not None
                        and lease[0] not in mine
                        and lease[2] > time.time()
                        and pid_alive(lease[1])
                    ):
                        conn.execute("COMMIT")
                        return None  # another process is submitting it: wait
                if row[1] is None and row[0] == body_hash:
                    conn.execute(
                        "INSERT OR REPLACE INTO idempotency_lease VALUES (?, ?, ?, ?, ?, ?)",
                        (*where, owner, os.getpid(), time.time() + self._lease),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return IdempotencyRecord(body_hash=row[0], job_id=row[1], created=row[2], new=new)

        pause = _POLL_FIRST
        while (record := await self._call(claim)) is None:
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, _POLL_MAX)
        if record.job_id is None and record.body_hash == body_hash:
            self._hold(scope, owner)
        return record

    def _hold(self, scope: KeyScope, owner: str) -> None:
        """Keep the lease while the claiming task runs; drop it when that ends."""
        holder = asyncio.current_task()
        self._held[scope] = owner
        task = asyncio.create_task(self._keep(scope, owner, holder))
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)

    async def _keep(self, scope: KeyScope, owner: str, holder: asyncio.Task[object] | None) -> None:
        where = (scope.system, scope.username, scope.key, owner)
        try:
            while holder is not None and not holder.done():
                await asyncio.wait({holder}, timeout=self._lease / 3)
                if holder.done():
                    break
                renewed = await self._call(
                    lambda conn: (
                        conn.execute(
                            "UPDATE idempotency_lease SET until = ?"
                            " WHERE system = ? AND username = ? AND key = ? AND owner = ?",
                            (time.time() + self._lease, *where),
                        ).rowcount
                    )
                )
                if not renewed:  # completed, released or (lapsed) taken over
                    if self._held.get(scope) == owner:
                        del self._held[scope]
                    return
            if self._held.get(scope) != owner:
                return  # completed or released here: the lease row went with it
            del self._held[scope]
            await self._call(
                lambda conn: conn.execute(
                    "DELETE FROM idempotency_lease"
                    " WHERE system = ? AND username = ? AND key = ? AND owner = ?",
                    where,
                )
            )
        except sqlite3.Error as exc:
            log.warning("idempotency lease not kept: %s", type(exc).__name__)

    async def complete(self, scope: KeyScope, job_id: str) -> None:
        where = (scope.system, scope.username, scope.key)

        def complete(conn: sqlite3.Connection) -> None:
            # not synced (one fsync, ~2 ms, less per submission): a job id lost to a
            # power cut leaves the key pending, and a retry finds the job by its stamp
            conn.execute("PRAGMA synchronous=NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "UPDATE idempotency SET job_id = ?"
                    " WHERE system = ? AND username = ? AND key = ?",
                    (job_id, *where),
                )
                conn.execute(
                    "DELETE FROM idempotency_lease WHERE system = ? AND username = ? AND key = ?",
                    where,
                )
                conn.execute("COMMIT")
            finally:
                conn.execute("PRAGMA synchronous=FULL")  # a claim is always synced

        self._held.pop(scope, None)
        await self._call(complete)

    async def release(self, scope: KeyScope) -> None:
        where = (scope.system, scope.username, scope.key)

        def release(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "DELETE FROM idempotency"
                " WHERE system = ? AND username = ? AND key = ? AND job_id IS NULL",
                where,
            )
            conn.execute(
                "DELETE FROM idempotency_lease WHERE system = ? AND username = ? AND key = ?",
                where,
            )
            conn.execute("COMMIT")

        self._held.pop(scope, None)
        await self._call(release)

    async def purge(self, older_than: float) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM idempotency_lease WHERE until < ?", (time.time(),))
            removed: int = conn.execute(
                "DELETE FROM idempotency WHERE created < ?", (older_than,)
            ).rowcount
            return removed

        return await self._call(purge)

    async def close(self) -> None:
        for task in list(self._holds):
            task.cancel()
        await asyncio.gather(*self._holds, return_exceptions=True)

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)


Submit = Callable[[str], Awaitable[str]]
"""Submits the job with the given comment; returns its id."""
Lookup = Callable[[str, int], Awaitable[list[str]]]
"""Ids of the user's jobs carrying the given comment, submitted since (epoch s)."""


def _uncertain(exc: errors.ApiError) -> bool:
    """Whether sbatch may have created a job although the call failed."""
    return exc.status_code >= 500 or exc.status_code in (408, 424)


class IdempotentSubmitter:
    """Runs keyed submissions: at most one job per (system, user, key)."""

    def __init__(
        self,
        store: IdempotencyStore,
        settings: IdempotencySettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._metrics = metrics
        self._inflight: dict[KeyScope, tuple[str, asyncio.Task[tuple[str, bool]]]] = {}
        self._next_purge = 0.0

    async def start(self) -> None:
        await self.store.open()
        await self._purge()

    async def close(self) -> None:
        tasks = [task for _, task in self._inflight.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        await self.store.close()

    async def _purge(self) -> None:
        now = time.time()
        if now >= self._next_purge:
            self._next_purge = now + 3600
            removed = await self.store.purge(now - self.settings.ttl_hours * 3600)
            if removed:
                log.info("forgot %d expired idempotency keys", removed)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.submissions.labels(outcome).inc()

    async def submit(
        self, scope: KeyScope, body: JobSubmitRequest, submit: Submit, lookup: Lookup
    ) -> tuple[str, bool]:
        """The job id for ``scope`` and whether it was an earlier submission's."""
        validate_key(scope.key)
        digest = body_hash(body)
        running = self._inflight.get(scope)
        if running is not None:
            if running[0] != digest:
                self._count("conflict")
                raise _conflict()
            job_id, _ = await asyncio.shield(running[1])
            self._count("coalesced")
            return job_id, True
        task = asyncio.create_task(self._submit_once(scope, digest, submit, lookup))
        self._inflight[scope] = (digest, task)
        task.add_done_callback(lambda _: self._inflight.pop(scope, None))
        return await asyncio.shield(task)

    async def _submit_once(
        self, scope: KeyScope, digest: str, submit: Submit, lookup: Lookup
    ) -> tuple[str, bool]:
        await self._purge()
        quota = KeyQuota(self.settings.max_keys_per_user, self.settings.ttl_hours * 3600)
        try:
            record = await self.store.claim(scope, digest, time.time(), quota)
        except errors.TooManyRequests:
            self._count("limited")
            raise
        if record.body_hash != digest:
            self._count("conflict")
            raise _conflict()
        if record.job_id is not None:
            self._count("replayed")
            return record.job_id, True
        comment = stamp(scope)
        if not record.new:  # pending from an earlier attempt
            command_source.set("idempotency")
            found = await lookup(comment, int(record.created) - _LOOKUP_SLACK_SECONDS)
            command_source.set("request")
            if found:
                if len(found) > 1:
                    log.warning("several jobs carry one idempotency stamp: %s", found)
                await self.store.complete(scope, found[0])
                self._count("recovered")
                return found[0], True
        try:
            job_id = await submit(comment)
        except errors.ApiError as exc:
            if not _uncertain(exc):
                await self.store.release(scope)
            self._count("failed")
            raise
        await self.store.complete(scope, job_id)
        self._count("submitted")
        return job_id, False


def _conflict() -> errors.UnprocessableEntity:
    return errors.UnprocessableEntity(
        f"This {HEADER} was used with a different request body; use a new key"
    )
