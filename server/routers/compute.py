"""/compute: submit, list, inspect, cancel and attach to jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response, status
from pydantic import BeforeValidator, StringConstraints

from hpcgate.dependencies import SystemDep
from hpcgate.scheduler.models import (
    AttachRequest,
    JobMetadataResponse,
    JobsResponse,
    JobSubmitRequest,
    JobSubmitResponse,
)

router = APIRouter(prefix="/compute/{system_name}", tags=["compute"])


def _blank_is_none(value: object) -> object:
    # pyfirecrest sends unset filters as empty strings (`name=&account=`)
    return None if value == "" else value


def _filter(max_length: int) -> object:
    text = Annotated[str, StringConstraints(max_length=max_length)]
    return Annotated[text | None, BeforeValidator(_blank_is_none)]


AccountFilter = _filter(256)
NameFilter = _filter(235)
TimeWindow = _filter(16)  # 1h, 8h, 24h, 3d, 7d (or <n>m/h/d); checked by the scheduler


@router.post("/jobs", status_code=status.HTTP_201_CREATED, response_model=JobSubmitResponse)
async def submit_job(ctx: SystemDep, body: JobSubmitRequest) -> JobSubmitResponse:
    """Submit a batch job: the script goes to sbatch on stdin, or `scriptPath` is used."""
    ctx.ensure_healthy("scheduler")
    job_id = await ctx.scheduler.submit(ctx.runner, body.job)
    return JobSubmitResponse(job_id=job_id)


@router.get("/jobs", response_model=JobsResponse)
async def list_jobs(
    ctx: SystemDep,
    allusers: bool = False,
    account: AccountFilter = None,
    name: NameFilter = None,
    time_window: TimeWindow = None,
) -> JobsResponse:
    """The caller's jobs (all visible jobs with `allusers=true`), active and recent."""
    ctx.ensure_healthy("scheduler")
    jobs = await ctx.scheduler.jobs(
        ctx.runner, all_users=allusers, name=name, account=account, time_window=time_window
    )
    return JobsResponse(jobs=jobs)


@router.get("/jobs/{job_id}", response_model=JobsResponse)
async def get_job(ctx: SystemDep, job_id: str) -> JobsResponse:
    """One job; an array id answers with the array's summary (its tasks in `tasks`)."""
    ctx.ensure_healthy("scheduler")
    return JobsResponse(jobs=[await ctx.scheduler.job(ctx.runner, job_id)])


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
async def cancel_job(ctx: SystemDep, job_id: str) -> Response:
    ctx.ensure_healthy("scheduler")
    await ctx.scheduler.cancel(ctx.runner, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/jobs/{job_id}/metadata", response_model=JobMetadataResponse)
async def get_job_metadata(ctx: SystemDep, job_id: str) -> JobMetadataResponse:
    """The batch script and the standard input/output/error paths."""
    ctx.ensure_healthy("scheduler")
    return JobMetadataResponse(jobs=[await ctx.scheduler.metadata(ctx.runner, job_id)])


@router.put("/jobs/{job_id}/attach", status_code=status.HTTP_204_NO_CONTENT)
async def attach_to_job(ctx: SystemDep, job_id: str, body: AttachRequest) -> Response:
    """Run a command inside the job's allocation (`srun --overlap`)."""
    ctx.ensure_healthy("scheduler")
    await ctx.scheduler.attach(ctx.runner, job_id, body.command)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
