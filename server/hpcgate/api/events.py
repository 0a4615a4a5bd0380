"""Job events for clients, over the shared watcher: SSE streams and long-polls.

Stream format (``text/event-stream``)::

    retry: 2000

    id: 1718000000123
    event: job
    data: {"jobId": "42", "status": {"state": "RUNNING", ...}, ...}

    : keep-alive

    id: 1718000004567
    event: terminal
    data: {"jobId": "42", "status": {"state": "COMPLETED", "exitCode": 0, ...}, ...}

* ``event: job``: a job's state (the first one per job: its state when the stream
  opened; then one per change). ``event: terminal``: the job ended (its last event).
  ``data`` is the job exactly as ``GET /compute/{system}/jobs/{id}`` shows it.
* ``event: error`` (multi-job streams only): a listed job cannot be followed;
  ``data`` is ``{"jobId", "status", "message"}`` (404 for unknown or others' jobs).
* ``event: synced`` (no id, ``data: {}``): the initial states (or, on resume, the
  missed events) have all been sent; live changes follow. A job absent from an
  all-jobs stream's initial states is one the watcher does not know (ended long
  ago): ask ``GET .../jobs/{id}`` once.
* ``id`` increases within a stream; send the last one seen as ``Last-Event-ID`` (or
  ``?lastEventId=``) when reconnecting: the stream then sends only newer events,
  and a job whose terminal event you already have is not sent again.
* Comment lines (``: keep-alive``) every ``heartbeat_seconds``.
* A job stream closes after its terminal event; a ``jobs=`` stream after every
  listed job's; any stream after ``max_stream_seconds``, or when its client falls
  ``QUEUE_LIMIT`` events behind (reconnect and resume).
* Each open stream and long-poll holds one of its user's ``max_subscribers_per_user``
  places (``JobWatcher.acquire``), given back whenever it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Literal

from starlette.requests import Request

from hpcgate import errors
from hpcgate.api.streaming import ClientBoundStreamingResponse, watch_disconnect
from hpcgate.compute.watcher import JobEvent, JobView, JobWatcher, Slot
from hpcgate.config import WatcherSettings

KEEP_ALIVE = b": keep-alive\n\n"
SYNCED = b"event: synced\ndata: {}\n\n"
RETRY = b"retry: 2000\n\n"
WaitMode = Literal["terminal", "change"]
WaitResult = Literal["terminal", "changed", "timeout"]


@functools.lru_cache(maxsize=1024)
def format_event(event: JobEvent) -> bytes:
    """One SSE event: ``id``, ``event`` (``job``/``terminal``), ``data`` (the Job JSON).

    Made once per event, whatever the number of streams it goes to (events hash by
    identity; the cache holds the last 1,024)."""
    name = "terminal" if event.terminal else "job"
    return f"id: {event.seq}\nevent: {name}\ndata: {event.job_json}\n\n".encode()


def format_error(job_id: str, status: int, message: str) -> bytes:
    data = json.dumps({"jobId": job_id, "status": status, "message": message})
    return f"event: error\ndata: {data}\n\n".encode()


def parse_event_id(value: str | None) -> int | None:
    """A ``Last-Event-ID``: decimal digits, else None (ignored)."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and len(value) <= 19 else None


@functools.lru_cache(maxsize=64)
def _shared(header: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """One copy of each header line: ten thousand streams send the same few."""
    return header


class EventStreamResponse(ClientBoundStreamingResponse):
    """An SSE response that ends with its client, so that subscriptions end with the
    connection (``hpcgate.api.streaming``: one task per stream, the request's own,
    cancelled when the client goes away; no task group, no task per chunk). Ten
    thousand are held open at once; ``on_close`` gives the stream's slot back."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        status_code: int = 200,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            content,
            status_code=status_code,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        super().init_headers(headers)
        self.raw_headers = [_shared(header) for header in self.raw_headers]

    async def sent(self) -> None:
        # many streams end on one terminal event: let every one of them write it
        # before any of them tears its request down (access log, budgets)
        await asyncio.sleep(0)


async def job_events(
    watcher: JobWatcher,
    user: str,
    views: Mapping[str, JobView] | None,
    *,
    last_id: int | None,
    failures: Mapping[str, errors.ApiError] | None = None,
    slot: Slot | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body for ``views`` (None: all of ``user``'s jobs).

    The subscription lives exactly as long as the body is iterated; ``slot`` (the
    stream's place in the budgets) is released when it ends.
    """
    settings: WatcherSettings = watcher.settings
    follow_all = views is None
    try:
        sub = watcher.subscribe(user, None if views is None else list(views), "sse")
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    try:
        yield RETRY
        if views is None:
            views = {view.view_id: view for view in await watcher.all_views(user)}
        for job_id, error in (failures or {}).items():
            yield format_error(job_id, error.status_code, error.message)
        sent: dict[str, int] = {}
        open_ids: set[str] = set()
        replay: list[tuple[int, str, JobEvent]] = []
        for view_id, view in views.items():
            replay.extend((e.seq, view_id, e) for e in view.events_after(last_id))
            if not view.terminal or (last_id is not None and view.seq > last_id):
                open_ids.add(view_id)
        for seq, view_id, event in sorted(replay, key=lambda item: item[0]):
            sent[view_id] = seq
            yield format_event(event)
            if event.terminal and seq == views[view_id].seq:
                open_ids.discard(view_id)
        if not follow_all and not open_ids:
            return
        yield SYNCED
        deadline = time.monotonic() + settings.max_stream_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or sub.overflowed:
                return
            await sub.wait(min(settings.heartbeat_seconds, remaining))
            pending = sub.take()
            if not pending:
                if not sub.overflowed and time.monotonic() < deadline:
                    yield KEEP_ALIVE
                continue
            chunk: list[bytes] = []
            for view_id, event in pending:
                if event.seq <= sent.get(view_id, last_id or 0):
                    continue  # already sent (replayed) or older than the client's last event
                sent[view_id] = event.seq
                chunk.append(format_event(event))
                if event.terminal and not follow_all:
                    open_ids.discard(view_id)
                    if not open_ids:
                        break
                elif not event.terminal:
                    open_ids.add(view_id)
            if chunk:
                yield b"".join(chunk)
            if not follow_all and not open_ids:
                return
    finally:
        watcher.unsubscribe(sub)
        if slot is not None:
            slot.release()


def _satisfied(
    view: JobView, mode: WaitMode, since: int | None, state: str | None
) -> WaitResult | None:
    if mode == "change":
        if since is not None and view.seq > since:
            return "changed"
        if since is None and state is not None and view.job.status.state != state:
            return "changed"
        if view.terminal and view.final:
            return "terminal"  # it will not change any more
        return None
    return "terminal" if view.terminal else None


async def wait_for_job(
    watcher: JobWatcher,
    request: Request,
    user: str,
    job_id: str,
    *,
    mode: WaitMode,
    timeout: float,
    since: int | None = None,
    state: str | None = None,
) -> tuple[JobView, WaitResult]:
    """Long-poll: the job as soon as it satisfies ``mode``, or at ``timeout``.

    ``change``: a state newer than event ``since``; else a state other than
    ``state``; else any change after the call. ``terminal``: the job ended.
    The wait holds one of the user's places (``TooManyRequests`` when all are taken).
    """
    slot = watcher.acquire(user, "longpoll")
    try:  # one frame for the whole wait: ten thousand are held at once
        started = time.monotonic()
        view = await watcher.view(user, job_id)
        if mode == "change" and since is None and state is None:
            since = view.seq
        if (result := _satisfied(view, mode, since, state)) is not None:
            return view, result
        sub = watcher.subscribe(user, [job_id], "longpoll")
        # the client going away ends the wait (no task per wake-up)
        unwatch = watch_disconnect(request.scope, request.receive, sub.close)
        try:
            while True:
                view = watcher.current(user, job_id) or view
                if (result := _satisfied(view, mode, since, state)) is not None:
                    return view, result
                remaining = timeout - (time.monotonic() - started)
                if remaining <= 0 or sub.closed:
                    return view, "timeout"
                await sub.wait(remaining)
                sub.take()  # the view holds the state; the events only wake us
        finally:
            unwatch()
            watcher.unsubscribe(sub)
    finally:
        slot.release()
