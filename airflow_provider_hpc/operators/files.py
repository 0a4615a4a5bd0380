"""Staging operators: upload / download (streamed, checksum verified) and file operations."""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

from airflow_provider_hpc.exceptions import HpcChecksumError, HpcError, HpcJobError
from airflow_provider_hpc.hooks.hpc import HpcHook, UsesHpcHook, file_digest

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath


def _is_object_storage(path: Any) -> bool:
    if isinstance(path, str):
        return "://" in path and not path.startswith("file://")
    from airflow.sdk import ObjectStoragePath

    return isinstance(path, ObjectStoragePath)


def _storage_path(path: Any) -> ObjectStoragePath:
    from airflow.sdk import ObjectStoragePath

    return path if isinstance(path, ObjectStoragePath) else ObjectStoragePath(str(path))


def _local(path: Any) -> Path:
    text = os.fspath(path)
    return Path(text.removeprefix("file://"))


class _HpcFilesBase(UsesHpcHook, BaseOperator):
    ui_color = "#e8f4e4"

    def __init__(
        self,
        *,
        system: str | None = None,
        hpc_conn_id: str = HpcHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.system = system
        self.hpc_conn_id = hpc_conn_id

    def _verify(self, remote_path: str, local_digest: str, reread: Any) -> str:
        """Compare with the server's checksum; ``reread(name)`` digests the local side anew
        when the server uses another algorithm than sha256."""
        remote = self.hook.checksum(remote_path, system=self.system)
        name = remote.hashlib_name
        local = local_digest if name == "sha256" else reread(name)
        if local.lower() != remote.checksum.lower():
            raise HpcChecksumError(
                f"{remote_path}: {remote.algorithm} local {local} != remote {remote.checksum}"
            )
        self.log.info("%s verified (%s %s)", remote_path, remote.algorithm, remote.checksum)
        return local


class HpcUploadOperator(_HpcFilesBase):
    """Stream a local file (or an ``ObjectStoragePath`` / URL such as ``s3://...``) to the cluster.

    :param local_path: source on the worker or in object storage.
    :param remote_path: target file on the cluster (a trailing ``/`` keeps the source name).
    :param create_parents: ``mkdir -p`` the target directory first.
    :param verify_checksum: compare sha256 with the server's ``ops/checksum`` afterwards.
    """

    template_fields: Sequence[str] = ("local_path", "remote_path", "system")

    def __init__(
        self,
        *,
        local_path: Any,
        remote_path: str,
        create_parents: bool = True,
        verify_checksum: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.local_path = local_path
        self.remote_path = remote_path
        self.create_parents = create_parents
        self.verify_checksum = verify_checksum

    def _open(self) -> IO[bytes]:
        if _is_object_storage(self.local_path):
            opened: IO[bytes] = _storage_path(self.local_path).open("rb")
            return opened
        return _local(self.local_path).open("rb")

    def execute(self, context: Context) -> dict[str, Any]:
        remote = self.remote_path
        if remote.endswith("/"):
            remote += posixpath.basename(os.fspath(str(self.local_path)).rstrip("/"))
        with self._open() as source:
            digest = file_digest(source)
            size = source.seek(0, os.SEEK_END)
            source.seek(0)
            if self.create_parents and posixpath.dirname(remote):
                self.hook.mkdir(posixpath.dirname(remote), system=self.system, parents=True)
            self.log.info("Uploading %s (%d bytes) to %s", self.local_path, size, remote)
            self.hook.upload(remote, source, system=self.system)

            def reread(name: str) -> str:
                source.seek(0)
                return file_digest(source, name)

            if self.verify_checksum:
                self._verify(remote, digest, reread)
        return {"remote_path": remote, "size": size, "sha256": digest}


class HpcDownloadOperator(_HpcFilesBase):
    """Stream a cluster file to the worker's disk (atomic rename) or to an ``ObjectStoragePath``.

    :param remote_path: source file on the cluster.
    :param local_path: target path or URL; a trailing ``/`` keeps the source name.
    :param verify_checksum: compare sha256 with the server's ``ops/checksum``; a mismatch
        removes the partial copy and fails the task (a retry downloads again).
    """

    template_fields: Sequence[str] = ("remote_path", "local_path", "system")

    def __init__(
        self, *, remote_path: str, local_path: Any, verify_checksum: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.remote_path = remote_path
        self.local_path = local_path
        self.verify_checksum = verify_checksum

    def execute(self, context: Context) -> dict[str, Any]:
        name = posixpath.basename(self.remote_path.rstrip("/"))
        if _is_object_storage(self.local_path):
            target = _storage_path(self.local_path)
            if str(target).endswith("/"):
                target = target / name
            return self._download(target, target, str(target))
        target_local = _local(self.local_path)
        if os.fspath(self.local_path).endswith(("/", os.sep)) or target_local.is_dir():
            target_local = target_local / name
        target_local.parent.mkdir(parents=True, exist_ok=True)
        partial = target_local.with_name(f".{target_local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            result = self._download(partial, partial, str(target_local))
            partial.replace(target_local)
        finally:
            partial.unlink(missing_ok=True)
        return result

    def _download(self, write_to: Any, cleanup: Any, shown: str) -> dict[str, Any]:
        hasher = hashlib.sha256()
        self.log.info("Downloading %s to %s", self.remote_path, shown)
        try:
            with write_to.open("wb") as sink:
                size = self.hook.download(self.remote_path, sink, system=self.system, hasher=hasher)
            digest = hasher.hexdigest()

            def reread(algorithm: str) -> str:
                with write_to.open("rb") as again:
                    return file_digest(again, algorithm)

            if self.verify_checksum:
                self._verify(self.remote_path, digest, reread)
        except BaseException:
            if cleanup.exists():
                cleanup.unlink()
            raise
        self.log.info("Downloaded %d bytes", size)
        return {"local_path": shown, "size": size, "sha256": digest}


Operation = Literal["mkdir", "rm", "mv", "cp", "symlink"]


class HpcFileOperator(_HpcFilesBase):
    """One file operation on the cluster: ``mkdir`` (``-p`` with ``parents``), ``rm``,
    ``mv`` / ``cp`` (server-side data-movement jobs, waited for), ``symlink``.

    :param operation: the operation.
    :param path: the path operated on (the source of mv / cp, the target of symlink).
    :param target_path: destination of mv / cp, link path of symlink.
    :param missing_ok: ``rm`` of a missing path succeeds.
    :param job_timeout: seconds to wait for a mv / cp job.
    """

    template_fields: Sequence[str] = ("path", "target_path", "system")

    def __init__(
        self,
        *,
        operation: Operation,
        path: str,
        target_path: str | None = None,
        parents: bool = True,
        missing_ok: bool = False,
        poll_interval: float = 5.0,
        job_timeout: float = 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if operation not in ("mkdir", "rm", "mv", "cp", "symlink"):
            raise ValueError(f"unknown operation {operation!r}")
        if operation in ("mv", "cp", "symlink") and not target_path:
            raise ValueError(f"{operation} needs target_path")
        self.operation = operation
        self.path = path
        self.target_path = target_path
        self.parents = parents
        self.missing_ok = missing_ok
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout

    def execute(self, context: Context) -> dict[str, Any]:
        hook, op = self.hook, self.operation
        self.log.info("%s %s %s", op, self.path, self.target_path or "")
        if op == "mkdir":
            hook.mkdir(self.path, system=self.system, parents=self.parents)
        elif op == "rm":
            hook.rm(self.path, system=self.system, missing_ok=self.missing_ok)
        elif op == "symlink":
            hook.symlink(self.path, str(self.target_path), system=self.system)
        else:
            start = hook.move if op == "mv" else hook.copy
            job = start(self.path, str(self.target_path), system=self.system)
            system = job.system or self.system
            summary = hook.wait_for_job(
                job.job_id,
                system=system,
                poll_interval=self.poll_interval,
                timeout=self.job_timeout,
            )
            if not summary.succeeded:
                detail = ""
                if job.logs and job.logs.error_log:
                    try:
                        detail = hook.tail(job.logs.error_log, system=system, lines=20).content
                    except HpcError:
                        pass
                raise HpcJobError(
                    f"{op} {self.path} -> {self.target_path}: "
                    f"job {job.job_id} ended {summary.state}\n{detail}",
                    job_id=job.job_id,
                    state=summary.state,
                )
            return {
                "operation": op,
                "path": self.path,
                "target_path": self.target_path,
                "job_id": job.job_id,
            }
        return {"operation": op, "path": self.path, "target_path": self.target_path}
