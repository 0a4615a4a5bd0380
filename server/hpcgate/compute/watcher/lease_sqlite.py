"""The watcher's lease and round sharing between the workers of one host (see ``lease``).

``hpcgate serve --workers N`` without Redis: the worker processes share one SQLite
file (``<state_dir>/watcher.sqlite3``, WAL, on each worker's own dedicated thread)
with, per system, the lease (``lease``: the leading worker's id and process id, until
when), each follower's interest (``interest``: JSON and generation, expiring after
three leases), the rounds' results (``rounds``, numbered; kept a minute) and a wake
counter a follower raises to ask for an early round (``wake``). Redis pushes rounds
and wake-ups; here every worker looks for new ones every ``_POLL`` seconds (one
indexed read), which is the only delay it adds. A leader whose process is gone is
replaced at once (same host: its process id is checked), one that stops gives the
lease back.

Everything that fails against the file is logged and retried each tick; meanwhile
this worker leads (polls for itself), as with Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from hpcgate.compute.watcher.results import RoundResult
from hpcgate.compute.watcher.shared import SharedCoordinator
from hpcgate.operations.local_state import immediate, pid_alive

T = TypeVar("T")
_POLL = 0.05  # seconds between looks for new rounds (followers) and wake-ups (leader)
_KEEP_ROUNDS = 60.0  # seconds a round's result stays in the file
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS lease (system TEXT PRIMARY KEY, replica TEXT NOT NULL,"
    " pid INTEGER NOT NULL, until REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS interest (system TEXT NOT NULL, replica TEXT NOT NULL,"
    " text TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (system, replica))",
    "CREATE TABLE IF NOT EXISTS rounds (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " system TEXT NOT NULL, sender TEXT NOT NULL, data TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rounds_system ON rounds(system, seq)",
    "CREATE TABLE IF NOT EXISTS wake (system TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
)


class SqliteCoordinator(SharedCoordinator):
    """One system's lease and round sharing through a SQLite file on this host."""

    member = "worker"
    store_errors = (sqlite3.Error,)

    def __init__(self, path: Path, *, system: str, lease_seconds: float) -> None:
        super().__init__(system=system, lease_seconds=lease_seconds)
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watcher-lease")
        self._conn: sqlite3.Connection | None = None
        self._seen_round = 0
        self._seen_wake = 0

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._conn is None:
                self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                conn = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False, timeout=10
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
                self._conn = conn
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    def _where(self) -> str:
        return str(self._path)

    # ------------------------------------------------------------ the watcher's side

    async def close(self) -> None:
        await self._stop_tasks()

        def give_back(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM lease WHERE system = ? AND replica = ?", (self._system, self.replica)
            )
            conn.execute(
                "DELETE FROM interest WHERE system = ? AND replica = ?",
                (self._system, self.replica),
            )
            conn.close()
            self._conn = None

        with contextlib.suppress(sqlite3.Error):
            await self._call(give_back)
        self._executor.shutdown(wait=True)

    async def share(self, result: RoundResult) -> None:
        if self._down:
            return
        data = result.to_json(self.replica)

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            with immediate(conn):
                conn.execute(
                    "INSERT INTO rounds (system, sender, data, at) VALUES (?, ?, ?, ?)",
                    (self._system, self.replica, data, now),
                )
                conn.execute(
                    "DELETE FROM rounds WHERE system = ? AND at < ?",
                    (self._system, now - _KEEP_ROUNDS),
                )

        try:
            await self._call(write)
        except sqlite3.Error as exc:
            self._failed(exc)

    # ------------------------------------------------------------ the store's side

    async def _hold(self) -> bool:
        def hold(conn: sqlite3.Connection) -> bool:
            now = time.time()
            with immediate(conn):
                row = conn.execute(
                    "SELECT replica, pid, until FROM lease WHERE system = ?", (self._system,)
                ).fetchone()
                held = (
                    row is None or row[0] == self.replica or row[2] < now or not pid_alive(row[1])
                )
                if held:
                    conn.execute(
                        "INSERT OR REPLACE INTO lease VALUES (?, ?, ?, ?)",
                        (self._system, self.replica, os.getpid(), now + self._lease),
                    )
            return held

        return await self._call(hold)

    async def _publish(self, text: str, *, urgent: bool) -> None:
        def publish(conn: sqlite3.Connection) -> None:
            with immediate(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO interest VALUES (?, ?, ?, ?)",
                    (self._system, self.replica, text, time.time() + 3 * self._lease),
                )
                if urgent:
                    conn.execute(
                        "INSERT INTO wake VALUES (?, 1)"
                        " ON CONFLICT(system) DO UPDATE SET seq = seq + 1",
                        (self._system,),
                    )

        await self._call(publish)

    async def _interest_texts(self) -> list[tuple[str, str | bytes | None]]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, str | bytes | None]]:
            return conn.execute(
                "SELECT replica, text FROM interest WHERE system = ? AND until > ?"
                " AND replica != ?",
                (self._system, time.time(), self.replica),
            ).fetchall()

        return await self._call(read)

    def _news(self, conn: sqlite3.Connection) -> tuple[list[tuple[int, str, str]], int]:
        rounds = conn.execute(
            "SELECT seq, sender, data FROM rounds WHERE system = ? AND seq > ? ORDER BY seq",
            (self._system, self._seen_round),
        ).fetchall()
        wake = conn.execute("SELECT seq FROM wake WHERE system = ?", (self._system,)).fetchone()
        return rounds, wake[0] if wake else 0

    async def _listen(self) -> None:
        """Apply the leader's rounds (while following); answer wake-ups (while leading)."""
        first = True
        while True:
            try:
                rounds, wake = await self._call(self._news)
            except sqlite3.Error as exc:
                self._failed(exc)
                await asyncio.sleep(self._tick)
                continue
            if rounds:
                self._seen_round = rounds[-1][0]
            woken, self._seen_wake = wake != self._seen_wake, wake
            if not first:  # what was there before this worker started is not news
                if woken:
                    await self._woken()
                for _, _, data in rounds:
                    self._apply_round(data)
            first = False
            await asyncio.sleep(_POLL)
