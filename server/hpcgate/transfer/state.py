"""Where unfinished transfers are kept: the backend interface, and who is alive.

A backend keeps, per transfer, its record (a flat JSON-able dict: who, where, until
when, its state, the staged file, the committed offset and hash state of a tus
upload, the job id of a multipart upload), the parts received (number -> size, ETag)
and the *claims* on it. Two backends: SQLite (``state_sqlite``, one server; the
default) and Redis (``state_redis``, replicas share it). Every operation is atomic
in its backend, so two replicas never both pass a check they race for.

Claims stand in for the locks of one process: ``patch`` (a tus PATCH), ``part:<n>``
(a part being written), ``complete`` and ``reap``. A claim names the server process
(*instance*) that holds it; a claim of a dead instance counts for nothing, so a
SIGKILL never leaves an upload locked. Instances announce themselves every few
seconds (``beat``); one is dead when its beat is older than ``stale`` seconds, or at
once when it ran on this host and its process id is gone (a restart on the same
host takes over without waiting).

The records hold the secret name of each staged file: the SQLite file is created
0600 in the 0700 state directory; Redis is trusted like the idempotency store.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from hpcgate.operations.local_state import pid_alive

Record = dict[str, Any]
Parts = dict[int, tuple[int, str]]
#: "ok"; "gone" (no such record); "closed" (not open); else "busy:<slot>" (held)
ClaimResult = str
LIVE_STATES = ("creating", "open")
Kind = Literal["multipart", "download", "tus"]


@dataclass(frozen=True, slots=True)
class Instance:
    """A server process that holds transfers' claims."""

    id: str
    host: str
    pid: int
    beat: float

    @classmethod
    def me(cls, now: float) -> Instance:
        return cls(secrets.token_hex(8), socket.gethostname(), os.getpid(), now)


def dead_instances(
    instances: Iterable[Instance], me: Instance, now: float, stale: float
) -> set[str]:
    """The ids of instances known to be gone (never ``me``)."""
    dead = set()
    for other in instances:
        if other.id == me.id:
            continue
        if now - other.beat > stale or (
            other.host == me.host and other.pid != me.pid and not pid_alive(other.pid)
        ):
            dead.add(other.id)
    return dead


def blocks(slot: str, blockers: Sequence[str]) -> bool:
    """Whether a held ``slot`` blocks a claim (``part:`` blocks every part)."""
    return any(slot.startswith(b) if b.endswith(":") else slot == b for b in blockers)


def group_of(record: Record) -> str:
    """The quota group: uploads and downloads of one user on one system."""
    kind = "download" if record["kind"] == "download" else "upload"
    return f"{record['system']}\n{record['user']}\n{kind}"


class StateBackend(Protocol):
    """Durable transfer state (see the module docstring)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def beat(self, instance: Instance, stale: float) -> None:
        """Announce ``instance`` as alive for ``stale`` seconds."""

    async def retire(self, instance: Instance) -> None:
        """``instance`` is shutting down: its claims count for nothing from now on."""

    async def instances(self) -> list[Instance]:
        """The instances that announced themselves and have not retired."""

    async def insert(self, record: Record, *, limit: int, now: float) -> int | None:
        """Add ``record`` unless its group holds ``limit`` live unexpired ones: then
        the number held (nothing added)."""

    async def load(self, transfer_id: str) -> tuple[Record, Parts] | None: ...

    async def update(self, transfer_id: str, fields: Record) -> None:
        """Set ``fields`` of the record (nothing if it is gone: never resurrected)."""

    async def set_part(self, transfer_id: str, number: int, size: int, etag: str) -> None: ...

    async def delete(self, transfer_id: str) -> None: ...

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
        """Take ``slot`` unless a live claim of another holder on a ``blockers`` slot
        exists; drop the claims of dead instances on the way."""

    async def release(self, transfer_id: str, slot: str, holder: str) -> None: ...

    async def due(self, now: float, limit: int) -> list[Record]:
        """At most ``limit`` records that expired, then at most ``limit`` still being
        created (the caller decides whether their owner is gone)."""
