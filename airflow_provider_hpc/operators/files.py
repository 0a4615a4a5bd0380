"""Staging operators: upload / download (streamed, checksum verified) and file operations.

The data moves through :class:`~airflow_provider_hpc.fs.filesystem.HpcFileSystem` (the
``hpc`` scheme of ``ObjectStoragePath``), so either side may be any object storage."""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

from airflow_provider_hpc.exceptions import HpcError, HpcJobError
from airflow_provider_hpc.fs.filesystem import HpcFileSystem
from airflow_provider_hpc.hooks.hpc import HpcHook, UsesHpcHook
from airflow_provider_hpc.operators.lineage import staged

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath


def _is_object_storage(path: Any) -> bool:
    """A URL or ``ObjectStoragePath`` other than a local ``file://`` one."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(path, ObjectStoragePath):
        return path.protocol not in ("", "file", "local")
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def _storage_path(path: Any) -> ObjectStoragePath:
    from airflow.sdk import ObjectStoragePath

    return path if isinstance(path, ObjectStoragePath) else ObjectStoragePath(str(path))


def _local(path: Any) -> Path:
    from airflow.sdk import ObjectStoragePath

    text = path.path if isinstance(path, ObjectStoragePath) else os.fspath(path)
    return Path(str(text).removeprefix("file://"))


def _is_hpc(path: Any) -> bool:
    return (_is_object_storage(path) and _storage_path(path).protocol == "hpc") or (
        isinstance(path, str) and path.startswith("hpc://")
    )


def _name(path: Any) -> str:
    return posixpath.basename(str(path).rstrip("/"))


class _HpcFilesBase(UsesHpcHook, BaseOperator):
    ui_color = "#e8f4e4"
    _staged: Any = None  # OpenLineage of the transfer, set by execute

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the file read and the file written (see ``operators.lineage``)."""
        return self._staged

    def __init__(
        self,
        *,
        system: str | None = None,
        hpc_conn_id: str = HpcHook.default_conn_name,
        verify_checksum: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.system = system
        self.hpc_conn_id = hpc_conn_id
        self.verify_checksum = verify_checksum

    def _cluster(self, path: Any) -> tuple[HpcFileSystem, str]:
        """The filesystem and fs path of a cluster path: a plain absolute path (on the
        operator's system and connection) or an ``hpc://conn@system/path`` URL / path."""
        if _is_hpc(path):
            target = _storage_path(path)
            conn_id = target.conn_id or self.hpc_conn_id
            hook = self.hook if conn_id == self.hpc_conn_id else HpcHook(conn_id)
            fs_path = str(target.path) + ("/" if str(path).endswith("/") else "")
            return HpcFileSystem.for_hook(hook, verify=self.verify_checksum), fs_path
        system = self.hook.resolve_system(self.system)
        fs = HpcFileSystem.for_hook(self.hook, verify=self.verify_checksum)
        return fs, f"{system}{path}"


class HpcUploadOperator(_HpcFilesBase):
    """Stream a file to the cluster, its SHA-256 compared with the server's afterwards.

    :param local_path: the source: a path on the worker, or an ``ObjectStoragePath`` /
        URL (``s3://...``, ``file://...``, even ``hpc://...``).
    :param remote_path: the target: an absolute path on the operator's ``system``, or an
        ``ObjectStoragePath`` / URL ``hpc://conn_id@system/path``; a trailing ``/``
        keeps the source's name.
    :param create_parents: ``mkdir -p`` the target directory first.
    :param verify_checksum: compare SHA-256 with the server's ``ops/checksum``.

    Local files of the filesystem's ``large_file_size`` (64 MiB) and more go through the
    resumable upload (tus), smaller ones through ``ops/upload``; other storage is
    streamed through a bounded buffer (see :mod:`airflow_provider_hpc.fs`).
    """

    template_fields: Sequence[str] = ("local_path", "remote_path", "system")

    def __init__(
        self,
        *,
        local_path: Any,
        remote_path: Any,
        create_parents: bool = True,
        verify_checksum: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(verify_checksum=verify_checksum, **kwargs)
        self.local_path = local_path
        self.remote_path = remote_path
        self.create_parents = create_parents

    def execute(self, context: Context) -> dict[str, Any]:
        fs, target = self._cluster(self.remote_path)
        if target.endswith("/"):
            target += _name(self.local_path)
        system, remote = fs.split_path(target)
        if self.create_parents and posixpath.dirname(remote) != "/":
            self.hook.mkdir(posixpath.dirname(remote), system=system, parents=True)
        if _is_object_storage(self.local_path):
            source = _storage_path(self.local_path)
            self.log.info("Streaming %s to %s", source, remote)
            with source.open("rb") as reader:
                size, digest = _stream(reader, fs.open(target, "wb"), fs.block_size)
        else:
            local = _local(self.local_path)
            size = local.stat().st_size
            self.log.info("Uploading %s (%d bytes) to %s", local, size, remote)
            digest = fs.put_file(str(local), target) or ""
        if self.verify_checksum:
            self.log.info("%s verified (sha256 %s)", remote, digest)
        self._staged = staged(self.local_path, (system, remote))
        return {"remote_path": remote, "size": size, "sha256": digest}


class HpcDownloadOperator(_HpcFilesBase):
    """Stream a cluster file to the worker's disk (atomic rename) or to other storage.

    :param remote_path: the source: an absolute path on the operator's ``system``, or an
        ``ObjectStoragePath`` / URL ``hpc://conn_id@system/path``.
    :param local_path: the target: a path on the worker, or an ``ObjectStoragePath`` /
        URL; a trailing ``/`` (or an existing directory) keeps the source's name.
    :param verify_checksum: compare SHA-256 with the server's ``ops/checksum``; a
        mismatch removes what was written and fails the task (a retry downloads again).
    """

    template_fields: Sequence[str] = ("remote_path", "local_path", "system")

    def __init__(
        self, *, remote_path: Any, local_path: Any, verify_checksum: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(verify_checksum=verify_checksum, **kwargs)
        self.remote_path = remote_path
        self.local_path = local_path

    def execute(self, context: Context) -> dict[str, Any]:
        fs, source = self._cluster(self.remote_path)
        name = _name(source)
        if _is_object_storage(self.local_path):
            target = _storage_path(self.local_path)
            if str(self.local_path).endswith("/"):
                target = target / name
            self.log.info("Streaming %s to %s", source, target)
            try:
                with fs.open(source, "rb", cache_type="none") as reader:
                    size, digest = _stream(reader, target.open("wb"), fs.block_size)
            except BaseException:
                if target.exists():
                    target.unlink()
                raise
            self._staged = staged(fs.split_path(source), target)
            return {"local_path": str(target), "size": size, "sha256": digest}
        local = _local(self.local_path)
        if str(self.local_path).endswith(("/", os.sep)) or local.is_dir():
            local = local / name
        local.parent.mkdir(parents=True, exist_ok=True)
        self.log.info("Downloading %s to %s", source, local)
        digest = fs.get_file(source, str(local)) or ""
        size = local.stat().st_size
        self.log.info("Downloaded %d bytes", size)
        self._staged = staged(fs.split_path(source), local)
        return {"local_path": str(local), "size": size, "sha256": digest}


def _stream(reader: IO[bytes], writer: Any, block_size: int) -> tuple[int, str]:
    """Copy ``reader`` into ``writer`` (closed at the end, discarded on error)."""
    hasher = hashlib.sha256()
    size = 0
    with writer:
        while chunk := reader.read(block_size):
            writer.write(chunk)
            hasher.update(chunk)
            size += len(chunk)
    return size, hasher.hexdigest()


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
