"""``HpcJobEventTrigger``: start DAGs when jobs end on the cluster (``AssetWatcher``).

An event trigger (Airflow 3 ``BaseEventTrigger``) on hpcgate's stream of the caller's
jobs (``GET /compute/{system}/events``). Every job of the connection's user counts,
whoever submitted it (Airflow, a script, ``sbatch`` on a login node): a job that
ends in one of ``states`` with a name matching ``name_pattern`` fires one event,
which Airflow turns into one asset event.

Exactly once, as far as the pieces allow. The trigger runs as an ack-mode shared
stream (one group per trigger): Airflow calls :meth:`_EventProducer.advance` only
after the asset events made from an SSE event are stored in its database, and only
then is the SSE event id written to the asset's state store (a cursor per trigger).
After a disconnect the stream resumes with ``Last-Event-ID`` from the last id seen;
after a triggerer restart from the stored cursor, so hpcgate replays what ended
meanwhile, and nothing that was already stored. The limits (see the README):

* hpcgate keeps job events in memory: a server restart, or a pause longer than the
  watcher's ``retention_seconds`` (jobs it saw) or Slurm's ``MinJobAge`` (jobs it
  did not see before the pause) loses the jobs that ended meanwhile;
* a triggerer that dies between storing an asset event and writing the cursor
  (milliseconds) replays that one event: at least once, not exactly once, there;
* the first start of a trigger takes the jobs that end from then on; the states
  the stream opens with are the past.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

from airflow_provider_hpc.exceptions import HpcError
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.hooks.models import TERMINAL_STATES, Job, normalize_state
from airflow_provider_hpc.hooks.retry import RetryPolicy
from airflow_provider_hpc.triggers.events import DEAD_AFTER, SSEParser, iter_sse

log = logging.getLogger(__name__)

CURSOR_KEY = "hpcgate.job_events.cursor"
"""Asset state store key prefix; the trigger's digest follows (one cursor per trigger)."""
ACCESSOR_WAIT = 30.0
"""Seconds the stream waits for its trigger's state store before starting without."""
MAX_BACKOFF = 60.0


@dataclass(frozen=True)
class JobEnded:
    """A raw event of the shared stream: a job reached a terminal state."""

    event_id: int
    job: dict[str, Any]


@dataclass(frozen=True)
class Mark:
    """A raw event that only moves the cursor (the stream is synced up to it)."""

    event_id: int


def trigger_digest(kwargs: dict[str, Any]) -> str:
    """A stable digest of a trigger's configuration (its cursor's and group's name)."""
    text = json.dumps(kwargs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Each trigger's asset state store, by digest, handed from the trigger (which Airflow
# gives it) to its stream's producer (which Airflow builds from kwargs alone).
_ACCESSORS: dict[str, asyncio.Future[Any]] = {}


def _accessor_future(digest: str) -> asyncio.Future[Any]:
    future = _ACCESSORS.get(digest)
    if future is None or future.get_loop() is not asyncio.get_running_loop():
        future = _ACCESSORS[digest] = asyncio.get_running_loop().create_future()
    return future


def _accessors(store: Any) -> list[Any]:
    """The per-asset accessors of a trigger's ``asset_state_store`` (one per asset)."""
    found = [*getattr(store, "_by_name", {}).values(), *getattr(store, "_by_uri", {}).values()]
    return found or [store]


async def load_cursor(store: Any, key: str) -> int | None:
    """The stored cursor (the highest of the watched assets' if they differ)."""
    values = [await accessor.aget(key) for accessor in _accessors(store)]
    ids = [int(v) for v in values if isinstance(v, int | str) and str(v).isdigit()]
    return max(ids) if ids else None


async def save_cursor(store: Any, key: str, event_id: int) -> None:
    for accessor in _accessors(store):
        await accessor.aset(key, event_id)


class _EventProducer(SharedStreamProducer):
    """One SSE connection (and its reconnects) for one trigger, in ack mode."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.digest = trigger_digest(kwargs)
        self.key = f"{CURSOR_KEY}.{self.digest}"
        self.store: Any = None
        self.last_id: int | None = None
        self.connections = 0

    async def _store(self) -> Any:
        future = _accessor_future(self.digest)
        try:
            return await asyncio.wait_for(asyncio.shield(future), ACCESSOR_WAIT)
        except TimeoutError:
            log.warning("No asset state store for the HPC job event trigger: cursor in memory")
            return None

    async def open_stream(self) -> AsyncIterator[tuple[Any, Any]]:
        self.store = await self._store()
        if self.store is not None:
            self.last_id = await load_cursor(self.store, self.key)
        hook = HpcHook(self.kwargs["hpc_conn_id"], system=self.kwargs.get("system"))
        system = await hook.aresolve_system(self.kwargs.get("system"))
        fresh = self.last_id is None  # the first start: what the stream opens with is past
        failures = 0
        try:
            while True:
                try:
                    async for item in self._follow(hook, system, fresh):
                        failures = 0
                        if isinstance(item, Mark):
                            fresh = False
                        yield item, item.event_id
                except asyncio.CancelledError:
                    raise
                except (HpcError, OSError, TimeoutError, ValueError) as exc:
                    failures += 1
                    log.warning("HPC job events for %s: %r; reconnecting", system, exc)
                else:
                    failures = 0
                policy = RetryPolicy(backoff_base=2.0, backoff_max=MAX_BACKOFF)
                pause = random.uniform(0, 2)  # noqa: S311  # a normal end (max lifetime)
                await asyncio.sleep(policy.backoff(min(failures, 6)) if failures else pause)
        finally:
            await hook.aclose()

    async def _follow(self, hook: HpcHook, system: str, fresh: bool) -> AsyncIterator[Any]:
        path = f"/compute/{quote(system, safe='')}/events"
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        async with hook.astream(path, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                raise HpcError(f"GET {path} -> {response.status_code}: {response.text[:200]}")
            self.connections += 1
            synced = False
            newest: int | None = None
            parser = SSEParser()
            async for event in iter_sse(_alive_lines(response, DEAD_AFTER), parser):
                event_id = int(event.id) if event.id and event.id.isdigit() else None
                if event.event == "synced":
                    synced = True
                    mark = max(newest or 0, self.last_id or 0)
                    if fresh and mark == 0:  # no event yet: start from the present
                        mark = int(time.time() * 1000)
                    if mark:
                        self.last_id = mark
                        yield Mark(mark)
                    continue
                if event.event not in ("job", "terminal") or event_id is None:
                    continue
                newest = max(newest or 0, event_id)
                if fresh and not synced:
                    continue  # ended before this trigger ever ran
                self.last_id = max(self.last_id or 0, event_id)
                if event.event == "terminal":
                    yield JobEnded(event_id, json.loads(event.data))

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        """Store the cursor past the events whose asset events Airflow has stored."""
        clean = 0
        for item in batch:
            if not item.outcome.is_clean:
                break
            clean += 1
        if clean and self.store is not None:
            await save_cursor(self.store, self.key, max(i.broker_payload for i in batch[:clean]))
        if clean < len(batch):
            raise HpcError(
                f"an HPC job event ({batch[clean].broker_payload}) was not stored by Airflow; "
                "the stream restarts from the stored cursor to deliver it again"
            )


async def _alive_lines(response: Any, limit: float) -> AsyncIterator[str]:
    lines = response.aiter_lines().__aiter__()
    while True:
        try:
            async with asyncio.timeout(limit):
                line = await lines.__anext__()
        except StopAsyncIteration:
            return
        yield line


class HpcJobEventTrigger(BaseEventTrigger):
    """Fires when one of the connection user's jobs ends (for ``AssetWatcher``).

    :param hpc_conn_id: the hpcgate connection (its user's jobs are watched).
    :param system: the system; else the connection's default.
    :param name_pattern: shell-style pattern for the job name (``fnmatch``, case
        sensitive); None: any name.
    :param states: end states that count (``COMPLETED``, ``FAILED``, ``TIMEOUT``...);
        None: any end state.

    The event's payload: ``job_id``, ``name``, ``state``, ``exit_code``, ``user``,
    ``system``, ``end`` (epoch seconds) and ``event_id`` (hpcgate's event id).
    """

    def __init__(
        self,
        *,
        hpc_conn_id: str = "hpc_default",
        system: str | None = None,
        name_pattern: str | None = None,
        states: Iterable[str] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hpc_conn_id = hpc_conn_id
        self.system = system
        self.name_pattern = name_pattern
        self.states = sorted({normalize_state(s) for s in states}) if states else None
        unknown = set(self.states or ()) - TERMINAL_STATES
        if unknown:
            raise ValueError(f"not end states: {sorted(unknown)}; use {sorted(TERMINAL_STATES)}")

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "hpc_conn_id": self.hpc_conn_id,
                "system": self.system,
                "name_pattern": self.name_pattern,
                "states": self.states,
            },
        )

    @property
    def digest(self) -> str:
        return trigger_digest(self.serialize()[1])

    def matches(self, job: dict[str, Any]) -> bool:
        parsed = Job.model_validate(job)
        if self.states is not None and parsed.state not in self.states:
            return False
        if parsed.state not in TERMINAL_STATES:
            return False
        return self.name_pattern is None or fnmatch.fnmatchcase(
            parsed.name or "", self.name_pattern
        )

    def payload(self, event: JobEnded) -> dict[str, Any]:
        job = Job.model_validate(event.job)
        return {
            "job_id": job.job_id,
            "name": job.name,
            "state": job.state,
            "exit_code": job.status.exit_code,
            "user": job.user,
            "system": self.system,
            "end": job.time.end if job.time else None,
            "event_id": event.event_id,
        }

    # ------------------------------------------------------------------ shared stream

    def shared_stream_key(self) -> Hashable | None:
        return ("hpcgate-job-events", self.digest)

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        return _EventProducer(dict(kwargs))

    async def filter_shared_stream(
        self, shared_stream: AsyncIterator[Any]
    ) -> AsyncIterator[TriggerEvent]:
        future = _accessor_future(self.digest)
        if not future.done():
            future.set_result(self.asset_state_store)
        try:
            async for raw in shared_stream:
                if isinstance(raw, JobEnded) and self.matches(raw.job):
                    yield TriggerEvent(self.payload(raw))
        finally:
            if _ACCESSORS.get(self.digest) is future:
                del _ACCESSORS[self.digest]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Without a shared stream (not how the triggerer runs it): the cursor lives in
        memory only."""
        producer = _EventProducer(self.serialize()[1])
        future = _accessor_future(self.digest)
        if not future.done():
            future.set_result(None)
        async for raw, _ in producer.open_stream():
            if isinstance(raw, JobEnded) and self.matches(raw.job):
                yield TriggerEvent(self.payload(raw))
