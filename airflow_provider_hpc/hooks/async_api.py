"""``HpcAsyncApi``: the endpoint methods triggers call (``httpx.AsyncClient``).

The same :mod:`.api` calls as the sync side, with the async connection lookup: a sync
lookup inside the triggerer would block its event loop.
"""

from __future__ import annotations

from airflow_provider_hpc.exceptions import HpcNotFoundError, HpcPreflightUnsupported
from airflow_provider_hpc.hooks import api
from airflow_provider_hpc.hooks.base import HpcBaseHook
from airflow_provider_hpc.hooks.models import (
    FileContent,
    FileStat,
    Job,
    JobAccounting,
    JobMetadata,
    JobSpec,
    JobSummary,
    PreflightResult,
)
from airflow_provider_hpc.hooks.sync_api import newest_named


class HpcAsyncApi(HpcBaseHook):
    """Async endpoint methods (``a``-prefixed twins of :class:`~.sync_api.HpcSyncApi`'s)."""

    async def asubmit_job(
        self, job: JobSpec, *, system: str | None = None, idempotency_key: str | None = None
    ) -> str:
        return await self._arun(
            api.submit_job(await self.aresolve_system(system), job, idempotency_key)
        )

    async def aget_job(self, job_id: str, *, system: str | None = None) -> list[Job]:
        return await self._arun(api.get_job(await self.aresolve_system(system), job_id))

    async def aget_job_status(self, job_id: str, *, system: str | None = None) -> JobSummary:
        return JobSummary.from_jobs(str(job_id), await self.aget_job(job_id, system=system))

    async def alist_jobs(
        self,
        *,
        system: str | None = None,
        name: str | None = None,
        allusers: bool = False,
        time_window: str | None = None,
    ) -> list[Job]:
        sysname = await self.aresolve_system(system)
        call = api.list_jobs(sysname, name=name, allusers=allusers, time_window=time_window)
        return newest_named(await self._arun(call), name)

    async def acancel_job(self, job_id: str, *, system: str | None = None) -> None:
        await self._arun(api.cancel_job(await self.aresolve_system(system), job_id))

    async def aget_job_metadata(
        self, job_id: str, *, system: str | None = None
    ) -> list[JobMetadata]:
        return await self._arun(api.job_metadata(await self.aresolve_system(system), job_id))

    async def apreflight_job(self, job: JobSpec, *, system: str | None = None) -> PreflightResult:
        resolved = await self.aresolve_system(system)
        try:
            return await self._arun(api.preflight_job(resolved, job))
        except HpcPreflightUnsupported as exc:  # see api.preflight_job
            await self.acancel_job(exc.job_id, system=resolved)
            raise

    async def aget_job_accounting(self, job_id: str, *, system: str | None = None) -> JobAccounting:
        return await self._arun(api.job_accounting(await self.aresolve_system(system), job_id))

    async def astat(
        self, path: str, *, system: str | None = None, dereference: bool = False
    ) -> FileStat:
        return await self._arun(
            api.stat(await self.aresolve_system(system), path, dereference=dereference)
        )

    async def aexists(self, path: str, *, system: str | None = None) -> bool:
        try:
            await self.astat(path, system=system, dereference=True)
        except HpcNotFoundError:
            return False
        return True

    async def atail(
        self,
        path: str,
        *,
        system: str | None = None,
        lines: int | None = 50,
        nbytes: int | None = None,
    ) -> FileContent:
        sysname = await self.aresolve_system(system)
        return await self._arun(api.tail(sysname, path, lines=lines, nbytes=nbytes))
