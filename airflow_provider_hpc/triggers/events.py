"""One shared job-event stream per (connection, API URL, system, identity) per triggerer.

Every :class:`~airflow_provider_hpc.triggers.job.HpcJobTrigger` in a triggerer process
that waits on the same connection and system registers its job id with one
:class:`JobEventHub`; the hub keeps a single Server-Sent Events stream of all the
caller's jobs open (``GET /compute/{system}/events``) and wakes the waiters of a job
when its state changes. 1,000 deferred tasks therefore cost one long-lived request,
not 1,000 periodic GETs.

* The stream opens with the first waiter and closes :data:`LINGER` seconds after
  the last one leaves.
* Reconnects resume with ``Last-Event-ID`` (the server replays what was missed,
  terminal events included), with back-off on errors; a stream silent for
  :data:`DEAD_AFTER` seconds (3x the server's heartbeat) counts as dead.
* After ``event: synced``, a waited-for job the stream has not mentioned is fetched
  once with a GET (one per job, shared by its waiters); while a job is known only
  from GETs, or while the stream is down, waiters fall back to GETs at their poll
  interval.
* A server without the endpoint (404/405, e.g. plain FirecREST) makes the hub
  report :data:`UNSUPPORTED`: triggers then poll exactly as before. That answer is
  remembered for :data:`UNSUPPORTED_TTL` seconds per key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from airflow_provider_hpc.exceptions import HpcError
from airflow_provider_hpc.hooks.hpc import HpcHook
from airflow_provider_hpc.hooks.models import Job, JobSummary
from airflow_provider_hpc.hooks.retry import RetryPolicy

log = logging.getLogger(__name__)

#: Seconds without a byte (data or ``: keep-alive``) after which the stream is dead.
DEAD_AFTER = 45.0
#: Seconds the stream stays open after its last waiter left (a task re-deferring).
LINGER = 5.0
#: Consecutive failed connections after which waiters poll while reconnects go on.
MAX_FAILURES = 3
#: Longest pause between reconnect attempts.
MAX_BACKOFF = 60.0
#: Seconds a 404/405 on the events endpoint is remembered.
UNSUPPORTED_TTL = 600.0
#: Seconds the stream may be down before waiters stop trusting the cached states.
DOWN_GRACE = 10.0
#: States remembered for jobs nobody waits for (yet).
CACHE_SIZE = 20_000


class _Unsupported(Exception):
    """The server has no events endpoint."""


#: Returned by :meth:`JobEventHub.next_status` (compare with ``is``): poll instead.
UNSUPPORTED = JobSummary(job_id="", state="UNSUPPORTED", tasks=0)


# --------------------------------------------------------------------------- SSE parsing


@dataclass(frozen=True)
class SSEvent:
    event: str
    data: str
    id: str | None


class SSEParser:
    """Incremental ``text/event-stream`` parser (WHATWG rules): feed lines without
    their terminator; a blank line dispatches. Comments are ignored, ``data`` lines
    are joined with newlines, ``id`` persists across events, ``retry`` sets
    :attr:`retry` (milliseconds)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry: int | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SSEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry":
            if value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> SSEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEvent(event or "message", "\n".join(data), self.last_id)


async def iter_sse(lines: AsyncIterator[str], parser: SSEParser) -> AsyncIterator[SSEvent]:
    async for line in lines:
        event = parser.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event


# --------------------------------------------------------------------------- the hub


@dataclass
class _Entry:
    summary: JobSummary | None = None
    streamed: bool = False  # the stream reported it (else only a GET did)
    changed: asyncio.Event | None = None
    refs: int = 0
    fetch: asyncio.Task[JobSummary] | None = None

    def update(self, summary: JobSummary, *, streamed: bool) -> None:
        if self.summary is not None and self.summary.terminal and not summary.terminal:
            return  # a late GET answer must not undo a terminal event
        self.summary = summary
        self.streamed = self.streamed or streamed
        if self.changed is not None:
            self.changed.set()
            self.changed = None


_HUBS: dict[tuple[Any, ...], JobEventHub] = {}
_UNSUPPORTED: dict[tuple[str, ...], float] = {}


async def get_hub(hook: HpcHook, system: str) -> JobEventHub | None:
    """The hub shared by this event loop's waiters for ``hook``'s connection and
    ``system``; None when the server is known to have no events endpoint."""
    key = await hook.astream_key(system)
    if _UNSUPPORTED.get(key, 0.0) > time.monotonic():
        return None
    loop = asyncio.get_running_loop()
    hub = _HUBS.get((loop, *key))
    if hub is None or hub.closed:
        hub = _HUBS[(loop, *key)] = JobEventHub(hook.fresh(), system, key)
    return hub


def reset_hubs() -> None:
    """Stop every hub and forget unsupported servers (tests)."""
    for hub in list(_HUBS.values()):
        hub.closed = True
        if hub._linger is not None:
            hub._linger.cancel()
        if hub._task is not None and not hub.loop.is_closed():
            hub._task.cancel()
    _HUBS.clear()
    _UNSUPPORTED.clear()


async def aclose_hubs() -> None:
    """Close this event loop's hubs now (tests; a triggerer lets them linger)."""
    loop = asyncio.get_running_loop()
    for hub in [hub for hub in _HUBS.values() if hub.loop is loop]:
        await hub.aclose()


def active_hubs() -> list[JobEventHub]:
    return [hub for hub in _HUBS.values() if not hub.closed]


class JobEventHub:
    """The waiters of one (connection, system) in one event loop, and their stream."""

    def __init__(self, hook: HpcHook, system: str, key: tuple[str, ...]) -> None:
        self.hook = hook
        self.system = system
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.refs = 0
        self.closed = False
        self.unsupported = False
        self.synced = False
        self.down_since: float | None = None
        self.last_event_id: str | None = None
        self.connections = 0  # streams opened (tests, logs)
        self.dead_after = DEAD_AFTER
        self._task: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._state_changed = asyncio.Event()  # synced/unsupported/down transitions

    # ------------------------------------------------------------------ waiters

    def register(self, job_id: str) -> None:
        entry = self._entry(job_id)
        entry.refs += 1
        self.refs += 1
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._task is None and not self.closed:
            self._task = self.loop.create_task(self._run(), name=f"hpc-events-{self.system}")
        elif self.synced and entry.summary is None:
            self._fetch(job_id)

    def release(self, job_id: str) -> None:
        entry = self.entries.get(job_id)
        if entry is not None and entry.refs > 0:
            entry.refs -= 1
            self.refs -= 1
        if self.refs == 0 and not self.closed and self._linger is None:
            self._linger = self.loop.call_later(LINGER, self._close_idle)

    @property
    def healthy(self) -> bool:
        """Cached states are current: the stream is synced, or only briefly down."""
        if self.synced:
            return True
        return self.down_since is not None and time.monotonic() - self.down_since < DOWN_GRACE

    async def next_status(
        self, job_id: str, previous: JobSummary | None, timeout: float
    ) -> JobSummary:
        """The job's state once it differs from ``previous`` (or is the first known);
        at ``timeout`` the current one (fetched with a GET unless the stream vouches
        for it). :data:`UNSUPPORTED` when the server has no events endpoint."""
        entry = self._entry(job_id)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self.unsupported:
                return UNSUPPORTED
            summary = entry.summary
            if summary is not None and (
                previous is None or summary.terminal or summary.state != previous.state
            ):
                return summary
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if summary is not None and entry.streamed and self.healthy:
                    return summary
                return await self._fetch(job_id)
            if entry.changed is None:
                entry.changed = asyncio.Event()
            changed, state = entry.changed, self._state_changed
            waits = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(state.wait())]
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    # ------------------------------------------------------------------ internals

    def _entry(self, job_id: str) -> _Entry:
        entry = self.entries.get(job_id)
        if entry is None:
            entry = self.entries[job_id] = _Entry()
            while len(self.entries) > CACHE_SIZE:
                old_id, old = next(iter(self.entries.items()))
                if old.refs > 0:
                    break
                del self.entries[old_id]
        return entry

    def _fetch(self, job_id: str) -> asyncio.Future[JobSummary]:
        """One GET of the job, shared by everyone asking while it runs."""
        entry = self._entry(job_id)
        if entry.fetch is None or entry.fetch.done():
            entry.fetch = self.loop.create_task(self._get(job_id, entry))
            entry.fetch.add_done_callback(_consume)
        return asyncio.shield(entry.fetch)

    async def _get(self, job_id: str, entry: _Entry) -> JobSummary:
        summary = await self.hook.aget_job_status(job_id, system=self.system)
        entry.update(summary, streamed=False)
        return entry.summary or summary

    def _signal(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    def _close_idle(self) -> None:
        self._linger = None
        if self.refs == 0:
            self.loop.create_task(self.aclose())

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
        if _HUBS.get((self.loop, *self.key)) is self:
            del _HUBS[(self.loop, *self.key)]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for entry in self.entries.values():
            if entry.fetch is not None and not entry.fetch.done():
                entry.fetch.cancel()
        await self.hook.aclose()

    # ------------------------------------------------------------------ the stream

    async def _run(self) -> None:
        failures = 0
        retry = 2.0
        while not self.closed:
            started = time.monotonic()
            parser = SSEParser()
            try:
                progressed = await self._stream(parser)
            except _Unsupported:
                log.info(
                    "%s has no job events endpoint for %s; polling",
                    self.hook.hpc_conn_id,
                    self.system,
                )
                _UNSUPPORTED[self.key] = time.monotonic() + UNSUPPORTED_TTL
                self.unsupported = True
                self._signal()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # transport errors, bad answers, dead streams
                progressed = False
                log.warning("Job events stream for %s failed: %r", self.system, exc)
            if parser.retry is not None:
                retry = parser.retry / 1000
            if self.synced or self.down_since is None:
                self.down_since = time.monotonic()
            self.synced = False
            self._signal()
            failures = 0 if progressed else failures + 1
            if failures == MAX_FAILURES:
                log.warning("Job events for %s keep failing; waiters poll meanwhile", self.system)
            if progressed and time.monotonic() - started > retry:
                delay = random.uniform(0, retry)  # noqa: S311  # a normal end (max lifetime)
            else:  # the retry layer's back-off, on the server's ``retry:`` base
                policy = RetryPolicy(backoff_base=retry, backoff_max=MAX_BACKOFF)
                delay = policy.backoff(min(failures, 6))
            await asyncio.sleep(delay)

    async def _stream(self, parser: SSEParser) -> bool:
        """Follow one stream until it ends; True if it delivered anything. The connect
        goes through the hook's auth flow (a fresh OAuth2 token after a 401) and retry
        layer, like any other request."""
        path = f"/compute/{quote(self.system, safe='')}/events"
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        progressed = False
        async with self.hook.astream(path, headers=headers) as response:
            if response.status_code in (404, 405, 501):
                raise _Unsupported
            if response.status_code != 200:
                await response.aread()
                raise HpcError(f"GET {path} -> {response.status_code}: {response.text[:200]}")
            self.connections += 1
            self.down_since = None
            seen: set[str] = set()
            async for event in iter_sse(_alive_lines(response, self.dead_after), parser):
                progressed = True
                self._handle(event, seen)
        return progressed

    def _handle(self, event: SSEvent, seen: set[str]) -> None:
        if event.id is not None:
            self.last_event_id = event.id
        if event.event in ("job", "terminal"):
            try:
                job = Job.model_validate(json.loads(event.data))
            except ValueError as exc:
                log.warning("Ignoring a malformed job event: %s", exc)
                return
            job_id = str(job.job_id)
            seen.add(job_id)
            self._entry(job_id).update(JobSummary.from_jobs(job_id, [job]), streamed=True)
        elif event.event == "synced":
            self.synced = True
            self._signal()
            for job_id, entry in list(self.entries.items()):
                if entry.refs > 0 and entry.summary is None and job_id not in seen:
                    self._fetch(job_id)  # unknown to the watcher: ended long ago


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: waiters see it through their shield


async def _alive_lines(response: httpx.Response, limit: float) -> AsyncIterator[str]:
    """The response's lines; TimeoutError when none arrives for ``limit`` seconds."""
    lines = response.aiter_lines().__aiter__()
    while True:
        try:
            async with asyncio.timeout(limit):
                line = await lines.__anext__()
        except StopAsyncIteration:
            return
        yield line
