"""/compute: submit, list, inspect, cancel and attach to jobs; wait for them.

Beyond FirecREST: ``Idempotency-Key`` on submission (``hpcgate.compute.idempotency``),
``waitFor`` long-polls on ``GET .../jobs/{id}`` and Server-Sent Events streams of
job state changes (``hpcgate.api.events``), all over the system's shared job watcher
(``hpcgate.compute.watcher``), which also answers plain job lookups while fresh.

Whose jobs a caller sees follows ``hpcgate.compute.scheduler.visibility`` on every route:
with ``own`` (the default) another user's job answers 404 exactly like an unknown
id, on GET, metadata, attach and cancel alike, and a listing holds the caller's jobs
only (``allusers=true`` is accepted and changes nothing); with ``scheduler``, what
Slurm shows the caller. Listings are bounded: ``scheduler.max_list_window`` (a
longer ``time_window`` is a 400) and ``scheduler.max_list_jobs`` (beyond it, the
newest jobs, flagged by the ``X-Hpcgate-Jobs-Truncated`` header).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import StringConstraints

from hpcgate import errors
from hpcgate.api.dependencies import SystemContext, SystemDep
from hpcgate.api.events import EventStreamResponse, job_events, parse_event_id, wait_for_job
from hpcgate.api.routers.params import BLANK_AS_NONE, QueryText256
from hpcgate.compute.idempotency import REPLAYED_HEADER, KeyScope
from hpcgate.compute.jobs import validate_job_id
from hpcgate.compute.scheduler.models import (
    AttachRequest,
    JobListing,
    JobMetadataResponse,
    JobsResponse,
    JobSubmitRequest,
    JobSubmitResponse,
)
from hpcgate.compute.scheduler.reports import JobAccountingResponse, JobPreflight
from hpcgate.compute.scheduler.visibility import JobVisibility, ensure_visible, may_see
from hpcgate.compute.watcher import JobView, JobWatcher

EVENT_ID_HEADER = "X-Hpcgate-Event-Id"
"""On job answers from the watcher: the id of the event the answer reflects."""
WAIT_HEADER = "X-Hpcgate-Wait"
"""On long-poll answers: ``terminal``, ``changed`` or ``timeout``."""
TRUNCATED_HEADER = "X-Hpcgate-Jobs-Truncated"
INCOMPLETE_HEADER = "X-Hpcgate-Jobs-Incomplete"
"""Set when accounting did not answer: the listing has the active jobs only, and says why."""
"""On listings cut to ``scheduler.max_list_jobs``: how many jobs matched in all."""
_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"}
}

router = APIRouter(prefix="/compute/{system_name}", tags=["compute"])


AccountFilter = QueryText256
NameFilter = Annotated[Annotated[str, StringConstraints(max_length=235)] | None, BLANK_AS_NONE]
# 1h, 8h, 24h, 3d, 7d (or <n>m/h/d); checked by the scheduler
TimeWindow = Annotated[Annotated[str, StringConstraints(max_length=16)] | None, BLANK_AS_NONE]


def _watcher(ctx: SystemContext) -> JobWatcher | None:
    return ctx.services.watchers.get(ctx.name)


def _require_watcher(ctx: SystemContext) -> JobWatcher:
    watcher = _watcher(ctx)
    if watcher is None:
        raise errors.NotFound(f"Job events are disabled on system '{ctx.name}'")
    return watcher


def _visibility(ctx: SystemContext) -> JobVisibility:
    return ctx.system.scheduler.job_visibility


async def _ensure_visible(ctx: SystemContext, job_id: str) -> None:
    """``NotFound`` (as for an unknown id) unless the caller may see the job: in
    ``own`` mode one lookup as the caller tells the owner; in ``scheduler`` mode Slurm
    itself decides in the command that follows."""
    visibility = _visibility(ctx)
    if visibility == "scheduler":
        return
    job = await ctx.scheduler.job(ctx.runner, job_id)
    ensure_visible(ctx.username, job.user, visibility, job_id)


def _answer(response: Response, view: JobView) -> JobsResponse:
    response.headers[EVENT_ID_HEADER] = str(view.seq)
    return JobsResponse(jobs=[view.job])


@router.post(
    "/jobs",
    status_code=status.HTTP_201_CREATED,
    response_model=JobSubmitResponse,
    responses={200: {"model": JobPreflight, "description": "dryRun=true: the verdict"}},
)
async def submit_job(
    ctx: SystemDep,
    body: JobSubmitRequest,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="a repeat with this key returns the first job (same body) or 422",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        Query(alias="dryRun", description="only ask the scheduler (sbatch --test-only)"),
    ] = False,
) -> JobSubmitResponse | JSONResponse:
    """Submit a batch job: the script goes to sbatch on stdin, or `scriptPath` is used.

    With `Idempotency-Key`, at most one job is created per key (and user): a repeat
    answers the same 201 body with `Idempotent-Replayed: true`.

    With `dryRun=true` nothing is submitted (the key is not used): 200 with the
    scheduler's verdict, `valid` or the `reason` (`category`: account, partition,
    qos, time_limit, resources, request), and the expected start.
    """
    ctx.ensure_healthy("scheduler")
    if dry_run:
        verdict = await ctx.scheduler.preflight(ctx.runner, body.job)
        return JSONResponse(verdict.model_dump(mode="json", by_alias=True))
    submitter = ctx.services.submitter
    if idempotency_key is None or submitter is None:
        job_id = await ctx.scheduler.submit(ctx.runner, body.job)
    else:
        runner, scheduler = ctx.runner, ctx.scheduler

        async def submit(comment: str) -> str:
            return await scheduler.submit(runner, body.job, comment=comment)

        async def lookup(comment: str, since: int) -> list[str]:
            return await scheduler.jobs_with_comment(runner, comment, since=since)

        scope = KeyScope(ctx.name, ctx.username, idempotency_key)
        job_id, replayed = await submitter.submit(scope, body, submit, lookup)
        if replayed:
            response.headers[REPLAYED_HEADER] = "true"
    watcher = _watcher(ctx)
    if watcher is not None:
        watcher.submitted(ctx.username, job_id)
    return JobSubmitResponse(job_id=job_id)


@router.get("/jobs", response_model=JobsResponse)
async def list_jobs(
    ctx: SystemDep,
    response: Response,
    allusers: bool = False,
    account: AccountFilter = None,
    name: NameFilter = None,
    time_window: TimeWindow = None,
) -> JobsResponse:
    """The caller's jobs, active and recent; with `allusers=true` every job the caller
    may see (only their own unless the system follows Slurm's visibility).

    A `time_window` over the system's maximum is a 400 naming it; over
    `max_list_jobs` results, the newest are answered and `X-Hpcgate-Jobs-Truncated`
    gives the number that matched.
    """
    ctx.ensure_healthy("scheduler")
    visibility = _visibility(ctx)
    jobs = await ctx.scheduler.jobs(
        ctx.runner,
        all_users=allusers and visibility == "scheduler",
        name=name,
        account=account,
        time_window=time_window,
    )
    if isinstance(jobs, JobListing) and jobs.missing:
        response.headers[INCOMPLETE_HEADER] = jobs.missing
    jobs = [job for job in jobs if may_see(ctx.username, job.user, visibility)]
    cap = ctx.system.scheduler.max_list_jobs
    if len(jobs) > cap:
        response.headers[TRUNCATED_HEADER] = str(len(jobs))
        jobs = jobs[-cap:]  # ordered by job id: the newest last
    return JobsResponse(jobs=jobs)


@router.get("/jobs/{job_id}", response_model=JobsResponse)
async def get_job(
    ctx: SystemDep,
    job_id: str,
    request: Request,
    response: Response,
    wait_for: Annotated[
        Literal["terminal", "change"] | None,
        Query(alias="waitFor", description="long-poll: until the job ends, or changes"),
    ] = None,
    timeout: Annotated[float, Query(ge=0, description="seconds to wait at most")] = 60.0,
    since: Annotated[
        int | None, Query(ge=0, description="waitFor=change: an event id (X-Hpcgate-Event-Id)")
    ] = None,
    state: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z_]{1,32}$", description="waitFor=change: the state you know"),
    ] = None,
) -> JobsResponse:
    """One job; an array id answers with the array's summary (its tasks in `tasks`).

    With `waitFor=terminal` the answer comes when the job has ended; with
    `waitFor=change` when its state differs from `state`, or is newer than event
    `since`, or (neither given) changes after the call; in any case at `timeout`
    seconds with the current state. `X-Hpcgate-Wait` says which happened.
    """
    ctx.ensure_healthy("scheduler")
    watcher = _watcher(ctx)
    if wait_for is not None:
        watcher = _require_watcher(ctx)
        if timeout > watcher.settings.max_wait_seconds:
            raise errors.BadRequest(
                f"timeout must be at most {watcher.settings.max_wait_seconds:g} seconds"
            )
        watcher.check_capacity()
        view, result = await wait_for_job(
            watcher,
            request,
            ctx.username,
            validate_job_id(job_id),
            mode=wait_for,
            timeout=timeout,
            since=since,
            state=state.upper() if state else None,
        )
        response.headers[WAIT_HEADER] = result
        return _answer(response, view)
    if watcher is not None and (cached := watcher.cached(ctx.username, job_id)) is not None:
        return _answer(response, cached)
    asked = time.monotonic()
    job = await ctx.scheduler.job(ctx.runner, job_id)
    ensure_visible(ctx.username, job.user, _visibility(ctx), job_id)
    if watcher is not None and job.user == ctx.username:
        # the watcher keeps the caller's own answer only in the caller's own scope
        if (kept := watcher.observe(ctx.username, job_id, job, observed=asked)) is not None:
            return _answer(response, kept)
    return JobsResponse(jobs=[job])


LastEventIdHeader = Annotated[
    str | None,
    Header(alias="Last-Event-ID", description="resume after this event id"),
]
LastEventIdQuery = Annotated[
    str | None,
    Query(alias="lastEventId", description="the same as the Last-Event-ID header"),
]


@router.get("/jobs/{job_id}/events", response_class=EventStreamResponse, responses=_SSE)
async def stream_job_events(
    ctx: SystemDep,
    job_id: str,
    last_event_id: LastEventIdHeader = None,
    last_event_id_query: LastEventIdQuery = None,
) -> EventStreamResponse:
    """Server-Sent Events: the job's state, then one event per change; the stream
    ends after the terminal event. Resume with `Last-Event-ID`.

    404 for an unknown job and for one the caller may not see; 429 (`Retry-After`)
    when the caller already holds `max_subscribers_per_user` streams and long-polls."""
    ctx.ensure_healthy("scheduler")
    watcher = _require_watcher(ctx)
    job_id = validate_job_id(job_id)
    last_id = parse_event_id(last_event_id or last_event_id_query)
    slot = watcher.acquire(ctx.username, "sse")
    try:
        view = await watcher.view(ctx.username, job_id)
        body = job_events(watcher, ctx.username, {job_id: view}, last_id=last_id, slot=slot)
    except BaseException:
        slot.release()
        raise
    return EventStreamResponse(body, on_close=slot.release)


@router.get("/events", response_class=EventStreamResponse, responses=_SSE)
async def stream_events(
    ctx: SystemDep,
    jobs: Annotated[
        str | None,
        Query(max_length=64_000, description="comma-separated job ids; omitted: all your jobs"),
    ] = None,
    last_event_id: LastEventIdHeader = None,
    last_event_id_query: LastEventIdQuery = None,
) -> EventStreamResponse:
    """Server-Sent Events for several jobs (`jobs=1,2,3`; the stream ends once all
    ended) or for all of the caller's jobs (never ends by itself).

    A listed job that is unknown, or that the caller may not see, is an `error`
    event (404). At most `max_unknown_ids_per_request` listed ids may be ones the
    watcher does not know yet (they cost one batched lookup): 400 beyond. 429
    (`Retry-After`) when the caller holds `max_subscribers_per_user` streams."""
    ctx.ensure_healthy("scheduler")
    watcher = _require_watcher(ctx)
    last_id = parse_event_id(last_event_id or last_event_id_query)
    ids: list[str] | None = None
    if jobs is not None and jobs.strip():
        ids = list(dict.fromkeys(part.strip() for part in jobs.split(",") if part.strip()))
        if len(ids) > watcher.settings.max_stream_jobs:
            raise errors.BadRequest(f"At most {watcher.settings.max_stream_jobs} jobs per stream")
        ids = [validate_job_id(job_id) for job_id in ids]
        unknown = sum(not watcher.knows(ctx.username, job_id) for job_id in ids)
        cap = watcher.settings.max_unknown_ids_per_request
        if unknown > cap:
            raise errors.BadRequest(
                f"At most {cap} job ids the server is not already following per request "
                f"({unknown} given; watcher.max_unknown_ids_per_request): list fewer, or "
                "follow all your jobs with /events"
            )
    slot = watcher.acquire(ctx.username, "sse")
    try:
        if ids is None:
            body = job_events(watcher, ctx.username, None, last_id=last_id, slot=slot)
        else:
            views, failures = await _views(watcher, ctx.username, ids)
            body = job_events(
                watcher, ctx.username, views, last_id=last_id, failures=failures, slot=slot
            )
    except BaseException:
        slot.release()
        raise
    return EventStreamResponse(body, on_close=slot.release)


async def _views(
    watcher: JobWatcher, user: str, ids: list[str]
) -> tuple[dict[str, JobView], dict[str, errors.ApiError]]:
    """The caller's views of ``ids`` (looked up together: one batch for the unknown)
    and the API errors of those that cannot be followed."""
    found = await asyncio.gather(
        *(watcher.view(user, job_id) for job_id in ids), return_exceptions=True
    )
    views: dict[str, JobView] = {}
    failures: dict[str, errors.ApiError] = {}
    for job_id, result in zip(ids, found, strict=True):
        if isinstance(result, errors.ApiError):
            failures[job_id] = result
        elif isinstance(result, BaseException):
            raise result
        else:
            views[job_id] = result
    return views, failures


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
async def cancel_job(ctx: SystemDep, job_id: str) -> Response:
    """Cancel a job; only its owner can (Slurm refuses others: 403, or 404 when the
    caller may not see the job)."""
    ctx.ensure_healthy("scheduler")
    await _ensure_visible(ctx, job_id)
    await ctx.scheduler.cancel(ctx.runner, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/jobs/{job_id}/metadata", response_model=JobMetadataResponse)
async def get_job_metadata(ctx: SystemDep, job_id: str) -> JobMetadataResponse:
    """The batch script and the standard input/output/error paths."""
    ctx.ensure_healthy("scheduler")
    await _ensure_visible(ctx, job_id)
    return JobMetadataResponse(jobs=[await ctx.scheduler.metadata(ctx.runner, job_id)])


@router.get("/jobs/{job_id}/accounting", response_model=JobAccountingResponse)
async def get_job_accounting(ctx: SystemDep, job_id: str) -> JobAccountingResponse:
    """The job's accounting (`sacct`): queue wait, elapsed, allocated nodes and CPUs,
    node- and CPU-hours, max RSS over the steps, CPU efficiency, the steps' states;
    for an array id, one record per task. Visible as the job itself is (the owner
    in each record decides: one `sacct`, no lookup first)."""
    ctx.ensure_healthy("scheduler")
    records = await ctx.scheduler.accounting(ctx.runner, job_id)
    for record in records:
        ensure_visible(ctx.username, record.user, _visibility(ctx), job_id)
    return JobAccountingResponse(jobs=records)


@router.put("/jobs/{job_id}/attach", status_code=status.HTTP_204_NO_CONTENT)
async def attach_to_job(ctx: SystemDep, job_id: str, body: AttachRequest) -> Response:
    """Run a command inside the job's allocation (`srun --overlap`); only in the
    caller's own jobs (Slurm refuses others)."""
    ctx.ensure_healthy("scheduler")
    await _ensure_visible(ctx, job_id)
    await ctx.scheduler.attach(ctx.runner, job_id, body.command)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
