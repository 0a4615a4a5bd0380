"""hpcgate served with test-only faults, for the tests that kill it.

The production server has no fault knobs; this launcher builds the same application
(``Services.build`` + ``create_app``) with the keyed-submission path wrapped: for keys
starting with ``FAULT_PREFIX`` it sleeps ``FAULT_DELAY`` seconds after sbatch, before
the job id is recorded (``DelayedStore``: a kill -9 there leaves a pending key), and
after recording, before answering (``DelayedSubmitter``: the client loses the answer).
Uploads to a file named ``FAULT_PREFIX...`` stall before they are open
(``tests.faults.transfer_state``). Only those keys and names are touched.
Run like ``hpcgate serve``::

    python -m tests.faults serve --config hpcgate.yaml --port 8000

The fault drills of the package's test modules (a private site whose daemons are
stopped and restarted under load, servers killed mid-wait) are described in
docs/faults.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from hpcgate.compute.idempotency import (
    IdempotencyRecord,
    IdempotencyStore,
    IdempotentSubmitter,
    KeyQuota,
    KeyScope,
    Lookup,
    Submit,
)
from hpcgate.compute.scheduler.models import JobSubmitRequest
from tests.faults.transfer_state import FAULT_PREFIX, SlowToOpen

FAULT_DELAY = 2.0


def faulty(scope: KeyScope) -> bool:
    return scope.key.startswith(FAULT_PREFIX)


class DelayedStore:
    """An ``IdempotencyStore`` that stalls before recording the job of a new faulty key."""

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store
        self._fresh: set[KeyScope] = set()

    async def open(self) -> None:
        await self.store.open()

    async def claim(
        self, scope: KeyScope, body_hash: str, now: float, quota: KeyQuota | None = None
    ) -> IdempotencyRecord:
        record = await self.store.claim(scope, body_hash, now, quota)
        if record.new and faulty(scope):
            self._fresh.add(scope)  # sbatch comes next: delay its record
        return record

    async def complete(self, scope: KeyScope, job_id: str) -> None:
        if scope in self._fresh:
            self._fresh.discard(scope)
            await asyncio.sleep(FAULT_DELAY)
        await self.store.complete(scope, job_id)

    async def release(self, scope: KeyScope) -> None:
        self._fresh.discard(scope)
        await self.store.release(scope)

    async def purge(self, older_than: float) -> int:
        return await self.store.purge(older_than)

    async def close(self) -> None:
        await self.store.close()


class DelayedSubmitter(IdempotentSubmitter):
    """Stalls after a faulty key's job was submitted and recorded, before answering."""

    async def submit(
        self, scope: KeyScope, body: JobSubmitRequest, submit: Submit, lookup: Lookup
    ) -> tuple[str, bool]:
        job_id, replayed = await super().submit(scope, body, submit, lookup)
        if not replayed and faulty(scope):
            await asyncio.sleep(FAULT_DELAY)
        return job_id, replayed


def _serve(args: argparse.Namespace) -> int:
    from hpcgate.api.app import create_app
    from hpcgate.cli import run_server
    from hpcgate.config import ConfigError, load_settings
    from hpcgate.services import Services

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"tests.faults: {exc}", file=sys.stderr)
        return 2
    services = Services.build(settings)
    assert services.submitter is not None
    services.submitter = DelayedSubmitter(
        DelayedStore(services.submitter.store), settings.idempotency, services.metrics
    )
    if services.transfers is not None:
        store = services.transfers.store
        store.backend = SlowToOpen(store.backend)
    run_server(create_app(settings, services=services), settings, host=args.host, port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the API with the faults")
    serve.add_argument("--config", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    return _serve(args)
