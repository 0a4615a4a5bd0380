"""What the SQLite stores that worker processes of one host share need alike.

The idempotency store, the transfer state and the watcher's lease each hold rows
owned by a process (a claim, a lease); a row whose process is gone may be taken over
at once, without waiting for it to lapse. Only meaningful on the host that wrote
the process id.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

__all__ = ["immediate", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction taken at its start (``BEGIN IMMEDIATE``): a read then a
    write inside it cannot race another process's."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
