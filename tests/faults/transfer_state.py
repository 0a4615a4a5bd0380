"""The transfer fault of ``tests.faults``' launcher: a ``StateBackend`` wrapper under
which an upload whose target's name starts with ``FAULT_PREFIX``, about to be marked
open (its temporary file made, its Slurm job submitted and recorded), first sleeps
``OPEN_DELAY`` seconds. A kill -9 in that window leaves what a crash mid-creation
leaves: a record still "creating", a staged file and a job nobody will use (the
reaper test in ``tests/transfer/test_restart.py``).
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Collection, Sequence

from hpcgate.transfer.state import ClaimResult, Instance, Parts, Record, StateBackend

FAULT_PREFIX = "fault-"

#: an upload whose target's name starts with the launcher's ``FAULT_PREFIX`` stalls
#: this long before it is marked open (a kill -9 in that window is a crash mid-creation)
OPEN_DELAY = 60.0


class SlowToOpen:
    """A ``StateBackend`` that stalls before a faulty upload becomes open."""

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend

    async def update(self, transfer_id: str, fields: Record) -> None:
        if fields.get("state") == "open":
            loaded = await self.backend.load(transfer_id)
            if loaded and posixpath.basename(loaded[0]["target"]).startswith(FAULT_PREFIX):
                await asyncio.sleep(OPEN_DELAY)
        await self.backend.update(transfer_id, fields)

    async def open(self) -> None:
        await self.backend.open()

    async def close(self) -> None:
        await self.backend.close()

    async def beat(self, instance: Instance, stale: float) -> None:
        await self.backend.beat(instance, stale)

    async def retire(self, instance: Instance) -> None:
        await self.backend.retire(instance)

    async def instances(self) -> list[Instance]:
        return await self.backend.instances()

    async def insert(self, record: Record, *, limit: int, now: float) -> int | None:
        return await self.backend.insert(record, limit=limit, now=now)

    async def load(self, transfer_id: str) -> tuple[Record, Parts] | None:
        return await self.backend.load(transfer_id)

    async def set_part(self, transfer_id: str, number: int, size: int, etag: str) -> None:
        await self.backend.set_part(transfer_id, number, size, etag)

    async def delete(self, transfer_id: str) -> None:
        await self.backend.delete(transfer_id)

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
        return await self.backend.claim(
            transfer_id, slot, holder, instance, blockers=blockers, open_only=open_only, dead=dead
        )

    async def release(self, transfer_id: str, slot: str, holder: str) -> None:
        await self.backend.release(transfer_id, slot, holder)

    async def due(self, now: float, limit: int) -> list[Record]:
        return await self.backend.due(now, limit)
