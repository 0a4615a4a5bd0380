"""Transfer state in one SQLite file: the default, for one server process.

The standard ``sqlite3`` module on one dedicated thread (a one-worker executor), as
the idempotency store does: every operation is one transaction on that thread, so
operations are atomic and the event loop never blocks. No extra dependency
(``aiosqlite`` would be the same thread with a queue). The file is created 0600 in
the state directory (0700): records hold the secret names of staged files. WAL with
``synchronous=NORMAL``: a killed process loses nothing; a power cut may lose the
last commits, which only makes an upload resume a little earlier (an offset is
never recorded before its bytes were written).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from hpcgate.transfer.state import (
    LIVE_STATES,
    ClaimResult,
    Instance,
    Parts,
    Record,
    blocks,
    group_of,
)

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS transfers (id TEXT PRIMARY KEY, grp TEXT NOT NULL,"
    " state TEXT NOT NULL, expires_at REAL NOT NULL, data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS transfers_group ON transfers(grp, state, expires_at)",
    "CREATE INDEX IF NOT EXISTS transfers_expiry ON transfers(expires_at)",
    "CREATE INDEX IF NOT EXISTS transfers_state ON transfers(state)",
    "CREATE TABLE IF NOT EXISTS parts (id TEXT NOT NULL, number INTEGER NOT NULL,"
    " size INTEGER NOT NULL, etag TEXT NOT NULL, PRIMARY KEY (id, number))",
    "CREATE TABLE IF NOT EXISTS claims (id TEXT NOT NULL, slot TEXT NOT NULL,"
    " holder TEXT NOT NULL, instance TEXT NOT NULL, PRIMARY KEY (id, slot))",
    "CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, host TEXT NOT NULL,"
    " pid INTEGER NOT NULL, beat REAL NOT NULL)",
)


class SqliteTransferState:
    """``StateBackend`` on an SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transfer-state")
        self._conn: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._conn is not None, "transfer state not open"
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # created private before sqlite opens it (sqlite would use the umask)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                conn.execute(statement)
            self._conn = conn

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)

    # -- instances -------------------------------------------------------------------

    async def beat(self, instance: Instance, stale: float) -> None:
        def beat(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?)",
                (instance.id, instance.host, instance.pid, instance.beat),
            )
            # long gone: forgotten (an unknown instance counts as dead anyway)
            conn.execute("DELETE FROM instances WHERE beat < ?", (instance.beat - 100 * stale,))

        await self._call(beat)

    async def retire(self, instance: Instance) -> None:
        await self._call(
            lambda conn: conn.execute("DELETE FROM instances WHERE id = ?", (instance.id,))
        )

    async def instances(self) -> list[Instance]:
        rows = await self._call(
            lambda conn: conn.execute("SELECT id, host, pid, beat FROM instances").fetchall()
        )
        return [Instance(*row) for row in rows]

    # -- records -----------------------------------------------------------------------

    async def insert(self, record: Record, *, limit: int, now: float) -> int | None:
        group = group_of(record)

        def insert(conn: sqlite3.Connection) -> int | None:
            (held,) = conn.execute(
                "SELECT COUNT(*) FROM transfers WHERE grp = ? AND state IN (?, ?)"
                " AND expires_at >= ?",
                (group, *LIVE_STATES, now),
            ).fetchone()
            if held >= limit:
                return int(held)
            conn.execute(
                "INSERT INTO transfers VALUES (?, ?, ?, ?, ?)",
                (record["id"], group, record["state"], record["expires_at"], json.dumps(record)),
            )
            return None

        return await self._call(insert)

    async def load(self, transfer_id: str) -> tuple[Record, Parts] | None:
        def load(conn: sqlite3.Connection) -> tuple[Record, Parts] | None:
            row = conn.execute("SELECT data FROM transfers WHERE id = ?", (transfer_id,)).fetchone()
            if row is None:
                return None
            parts = conn.execute(
                "SELECT number, size, etag FROM parts WHERE id = ?", (transfer_id,)
            ).fetchall()
            return json.loads(row[0]), {number: (size, etag) for number, size, etag in parts}

        return await self._call(load)

    async def update(self, transfer_id: str, fields: Record) -> None:
        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT data FROM transfers WHERE id = ?", (transfer_id,)).fetchone()
            if row is None:
                return
            record = {**json.loads(row[0]), **fields}
            conn.execute(
                "UPDATE transfers SET state = ?, expires_at = ?, data = ? WHERE id = ?",
                (record["state"], record["expires_at"], json.dumps(record), transfer_id),
            )

        await self._call(update)

    async def set_part(self, transfer_id: str, number: int, size: int, etag: str) -> None:
        def set_part(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM transfers WHERE id = ?", (transfer_id,)).fetchone():
                conn.execute(
                    "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?)",
                    (transfer_id, number, size, etag),
                )

        await self._call(set_part)

    async def delete(self, transfer_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            for table in ("transfers", "parts", "claims"):
                conn.execute(f"DELETE FROM {table} WHERE id = ?", (transfer_id,))  # noqa: S608

        await self._call(delete)

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
        def claim(conn: sqlite3.Connection) -> ClaimResult:
            row = conn.execute(
                "SELECT state FROM transfers WHERE id = ?", (transfer_id,)
            ).fetchone()
            if row is None:
                return "gone"
            if open_only and row[0] != "open":
                return "closed"
            known = {i for (i,) in conn.execute("SELECT id FROM instances")}
            held = conn.execute(
                "SELECT slot, holder, instance FROM claims WHERE id = ?", (transfer_id,)
            ).fetchall()
            for other, other_holder, other_instance in held:
                if other_instance in dead or other_instance not in known:
                    conn.execute(
                        "DELETE FROM claims WHERE id = ? AND slot = ?", (transfer_id, other)
                    )
                elif other_holder != holder and blocks(other, blockers):
                    return f"busy:{other}"
            conn.execute(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)",
                (transfer_id, slot, holder, instance),
            )
            return "ok"

        return await self._call(claim)

    async def release(self, transfer_id: str, slot: str, holder: str) -> None:
        await self._call(
            lambda conn: conn.execute(
                "DELETE FROM claims WHERE id = ? AND slot = ? AND holder = ?",
                (transfer_id, slot, holder),
            )
        )

    async def due(self, now: float, limit: int) -> list[Record]:
        def due(conn: sqlite3.Connection) -> list[Record]:
            rows = conn.execute(
                "SELECT data FROM transfers WHERE expires_at < ? ORDER BY expires_at LIMIT ?",
                (now, limit),
            ).fetchall()
            rows += conn.execute(
                "SELECT data FROM transfers WHERE state = 'creating' AND expires_at >= ? LIMIT ?",
                (now, limit),
            ).fetchall()
            return [json.loads(data) for (data,) in rows]

        return await self._call(due)
