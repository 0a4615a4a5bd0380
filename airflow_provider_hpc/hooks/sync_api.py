"""``HpcSyncApi``: the endpoint methods workers call (``httpx.Client``).

Each method resolves the system, builds its call with :mod:`.api` and runs it through
:class:`~.base.HpcBaseHook`; uploads and downloads stream. Job waiting is in
:mod:`.waiting`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import IO, Any

from airflow_provider_hpc.exceptions import HpcNotFoundError, HpcPreflightUnsupported
from airflow_provider_hpc.hooks import api
from airflow_provider_hpc.hooks.base import HpcBaseHook
from airflow_provider_hpc.hooks.models import (
    FileChecksum,
    FileContent,
    FileEntry,
    FileStat,
    Job,
    JobAccounting,
    JobMetadata,
    JobSpec,
    JobSummary,
    PreflightResult,
    System,
    TransferJob,
)
from airflow_provider_hpc.hooks.waiting import wait_for_job


class HpcSyncApi(HpcBaseHook):
    """Sync endpoint methods (status, jobs, files)."""

    def list_systems(self) -> list[System]:
        return self._run(api.systems())

    # ------------------------------------------------------------------ jobs (sync)

    def submit_job(
        self, job: JobSpec, *, system: str | None = None, idempotency_key: str | None = None
    ) -> str:
        """Submit; return the job id. Retried only where the server cannot have acted."""
        return self._run(api.submit_job(self.resolve_system(system), job, idempotency_key))

    def get_job(self, job_id: str, *, system: str | None = None) -> list[Job]:
        """The job's records (several for an array job)."""
        return self._run(api.get_job(self.resolve_system(system), job_id))

    def get_job_status(self, job_id: str, *, system: str | None = None) -> JobSummary:
        return JobSummary.from_jobs(str(job_id), self.get_job(job_id, system=system))

    def list_jobs(
        self,
        *,
        system: str | None = None,
        name: str | None = None,
        allusers: bool = False,
        time_window: str | None = None,
    ) -> list[Job]:
        """The caller's active jobs and those ended within ``time_window`` (server default
        24h); with ``name``, only those with exactly that name. Newest first."""
        call = api.list_jobs(
            self.resolve_system(system), name=name, allusers=allusers, time_window=time_window
        )
        return newest_named(self._run(call), name)

    def cancel_job(self, job_id: str, *, system: str | None = None) -> None:
        self._run(api.cancel_job(self.resolve_system(system), job_id))

    def get_job_metadata(self, job_id: str, *, system: str | None = None) -> list[JobMetadata]:
        return self._run(api.job_metadata(self.resolve_system(system), job_id))

    def get_job_page_url(self, job_id: str, *, system: str | None = None) -> str:
        """A link a person can open in a browser (hpcgate's signed job page, or the site's
        portal); :class:`HpcApiError` 404/405 from servers without job pages."""
        return self._run(api.job_page_link(self.resolve_system(system), job_id))

    def preflight_job(self, job: JobSpec, *, system: str | None = None) -> PreflightResult:
        """hpcgate: would the scheduler accept ``job``? (``sbatch --test-only``; nothing
        is submitted; a refusal is ``valid=False``, not an exception)."""
        resolved = self.resolve_system(system)
        try:
            return self._run(api.preflight_job(resolved, job))
        except HpcPreflightUnsupported as exc:
            self.cancel_job(exc.job_id, system=resolved)
            raise

    def get_job_accounting(self, job_id: str, *, system: str | None = None) -> JobAccounting:
        """hpcgate: the job's accounting (``sacct``); for an array id, the tasks summed."""
        return self._run(api.job_accounting(self.resolve_system(system), job_id))

    def wait_for_job(
        self,
        job_id: str,
        *,
        system: str | None = None,
        poll_interval: float = 30.0,
        timeout: float | None = None,
        on_poll: Callable[[JobSummary], None] | None = None,
        error_window: float = 600.0,
        not_found_grace: float = 120.0,
    ) -> JobSummary:
        """Poll until the job is terminal (see :func:`.waiting.wait_for_job`)."""
        return wait_for_job(
            lambda: self.get_job_status(job_id, system=system),
            job_id=str(job_id),
            log=self.log,
            poll_interval=poll_interval,
            timeout=timeout,
            on_poll=on_poll,
            error_window=error_window,
            not_found_grace=not_found_grace,
        )

    # ------------------------------------------------------------------ files (sync)

    def tail(
        self,
        path: str,
        *,
        system: str | None = None,
        lines: int | None = 50,
        nbytes: int | None = None,
    ) -> FileContent:
        return self._run(api.tail(self.resolve_system(system), path, lines=lines, nbytes=nbytes))

    def view(
        self, path: str, *, system: str | None = None, offset: int = 0, size: int = 65536
    ) -> str:
        return self._run(api.view(self.resolve_system(system), path, offset=offset, size=size))

    def stat(self, path: str, *, system: str | None = None, dereference: bool = False) -> FileStat:
        return self._run(api.stat(self.resolve_system(system), path, dereference=dereference))

    def exists(self, path: str, *, system: str | None = None) -> bool:
        try:
            self.stat(path, system=system, dereference=True)
        except HpcNotFoundError:
            return False
        return True

    def checksum(self, path: str, *, system: str | None = None) -> FileChecksum:
        return self._run(api.checksum(self.resolve_system(system), path))

    def ls(
        self, path: str, *, system: str | None = None, show_hidden: bool = False
    ) -> list[FileEntry]:
        return self._run(api.ls(self.resolve_system(system), path, show_hidden=show_hidden))

    def mkdir(self, path: str, *, system: str | None = None, parents: bool = True) -> None:
        self._run(api.mkdir(self.resolve_system(system), path, parents=parents))

    def rm(self, path: str, *, system: str | None = None, missing_ok: bool = False) -> None:
        try:
            self._run(api.rm(self.resolve_system(system), path))
        except HpcNotFoundError:
            if not missing_ok:
                raise

    def symlink(self, target: str, link_path: str, *, system: str | None = None) -> None:
        self._run(api.symlink(self.resolve_system(system), target, link_path))

    def move(self, source: str, target: str, *, system: str | None = None) -> TransferJob:
        """Start a server-side move; returns the data-movement job to wait for."""
        return self._run(api.transfer(self.resolve_system(system), "mv", source, target))

    def copy(self, source: str, target: str, *, system: str | None = None) -> TransferJob:
        """Start a server-side copy; returns the data-movement job to wait for."""
        return self._run(api.transfer(self.resolve_system(system), "cp", source, target))

    def upload(self, remote_path: str, source: IO[bytes], *, system: str | None = None) -> None:
        """Stream ``source`` to ``remote_path`` (``ops/upload``: dir + multipart filename).

        ``source`` must be seekable: it is rewound before each attempt.
        """
        directory, _, filename = remote_path.rstrip("/").rpartition("/")
        if not filename:
            raise ValueError(f"remote_path {remote_path!r} names no file")
        start = source.tell()

        def files() -> dict[str, Any]:
            source.seek(start)
            return {"file": (filename, source, "application/octet-stream")}

        self._send(api.upload(self.resolve_system(system), directory or "/"), files=files).close()

    def download(
        self,
        remote_path: str,
        sink: IO[bytes],
        *,
        system: str | None = None,
        hasher: Any = None,
        chunk_size: int = 1 << 20,
    ) -> int:
        """Stream ``remote_path`` into ``sink`` (updating ``hasher``); return the byte count."""
        response = self._send(api.download(self.resolve_system(system), remote_path), stream=True)
        size = 0
        try:
            for chunk in response.iter_bytes(chunk_size):
                sink.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                size += len(chunk)
        finally:
            response.close()
        return size


def newest_named(jobs: list[Job], name: str | None) -> list[Job]:
    if name is not None:
        jobs = [job for job in jobs if job.name == name]
    return sorted(jobs, key=lambda job: job.numeric_id, reverse=True)


def file_digest(source: IO[bytes], algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of the rest of ``source`` (streamed); the position is restored."""
    start = source.tell()
    digest = hashlib.new(algorithm)
    while chunk := source.read(chunk_size):
        digest.update(chunk)
    source.seek(start)
    return digest.hexdigest()
