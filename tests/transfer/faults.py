"""hpcgate served with one test-only transfer fault, for the reaper test that kills it.

The production server has no fault knobs; this launcher builds the same application
(``Services.build`` + ``create_app``, served by ``cli.run_server``) with the transfer
state backend wrapped: when an upload whose target's name starts with
``FAULT_PREFIX`` is about to be marked open (its temporary file made and its Slurm
job submitted and recorded), it sleeps ``FAULT_DELAY`` seconds first. A kill -9 in
that window leaves what a crash mid-creation leaves: a record still "creating", a
staged file and a job nobody will use. Run like ``hpcgate serve``::

    python -m tests.transfer.faults serve --config hpcgate.yaml --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import posixpath
import sys
from collections.abc import Collection, Sequence

from hpcgate.transfer.state import ClaimResult, Instance, Parts, Record, StateBackend

FAULT_PREFIX = "fault-"
FAULT_DELAY = 60.0


class SlowToOpen:
    """A ``StateBackend`` that stalls before a faulty upload becomes open."""

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend

    async def update(self, transfer_id: str, fields: Record) -> None:
        if fields.get("state") == "open":
            loaded = await self.backend.load(transfer_id)
            if loaded and posixpath.basename(loaded[0]["target"]).startswith(FAULT_PREFIX):
                await asyncio.sleep(FAULT_DELAY)
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


def _serve(args: argparse.Namespace) -> int:
    from hpcgate.api.app import create_app
    from hpcgate.cli import run_server
    from hpcgate.config import ConfigError, load_settings
    from hpcgate.services import Services

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"tests.transfer.faults: {exc}", file=sys.stderr)
        return 2
    services = Services.build(settings)
    assert services.transfers is not None
    store = services.transfers.store
    store.backend = SlowToOpen(store.backend)
    run_server(create_app(settings, services=services), settings, host=args.host, port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.transfer.faults")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the API with the fault")
    serve.add_argument("--config", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    return _serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
