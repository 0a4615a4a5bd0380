"""``HpcFileSystem``: the cluster's files as an fsspec filesystem (scheme ``hpc``).

Airflow's ``ObjectStoragePath("hpc://hpc_default@hpcsite/scratch/u/results.csv")`` takes
the connection id from the URL's user part and gives this filesystem the path
``hpcsite/scratch/u/results.csv``: the first segment is the system (cluster), the rest
the absolute path on it. A path that starts with ``/`` uses the connection's system.

Every operation is an API call as the connection's user: ``ops/ls``, ``ops/stat``,
``ops/mkdir``, ``ops/rm``, ``ops/checksum``; copies and moves on one system are the
server's data-movement jobs (``transfer/cp``, ``transfer/mv``). Data is streamed both
ways (see :mod:`.files`, :mod:`.transfer`): small files through ``ops/upload`` /
``ops/download``, files of ``large_file_size`` and more through the transfer flows
(a resumable tus upload that the server verifies by SHA-256; a signed download URL
read in ranges, resumed where a stream broke). After every upload and full download the
SHA-256 is compared with the server's ``ops/checksum`` (``verify``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import posixpath
import stat as stat_module
import uuid
from functools import cached_property
from typing import Any

import fsspec  # type: ignore[import-untyped]
from fsspec.spec import AbstractFileSystem  # type: ignore[import-untyped]
from upath import UPath
from upath.registry import register_implementation as register_upath

from airflow_provider_hpc.exceptions import HpcApiError, HpcChecksumError, HpcNotFoundError
from airflow_provider_hpc.fs import transfer
from airflow_provider_hpc.fs.files import HpcFile
from airflow_provider_hpc.hooks.hpc import HpcHook

#: URL schemes served by this module (read by Airflow's ``airflow.sdk.io``).
schemes = ["hpc"]

MiB = 1 << 20
_TYPES = {"d": "directory", "-": "file", "l": "link"}


class HpcFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """Files on the clusters behind one ``hpc`` connection.

    :param conn_id: Airflow connection id (``hpc_default``).
    :param large_file_size: files of this size and more move through the transfer
        flows (resumable upload, ranged signed download); smaller ones through the
        direct ``ops/upload`` / ``ops/download``.
    :param block_size: read-ahead and write buffer per open file (memory per file).
    :param verify: compare the SHA-256 with the server's checksum after transfers.
    :param job_poll_interval: seconds between checks of a cp / mv job.
    :param job_timeout: seconds to wait for a cp / mv job.
    """

    protocol = ("hpc",)
    root_marker = ""
    cachable = True

    def __init__(
        self,
        conn_id: str | None = None,
        *,
        large_file_size: int = 64 * MiB,
        block_size: int = 4 * MiB,
        verify: bool = True,
        job_poll_interval: float = 1.0,
        job_timeout: float = 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id or HpcHook.default_conn_name
        self.large_file_size = large_file_size
        self.block_size = block_size
        self.verify_checksums = verify
        self.job_poll_interval = job_poll_interval
        self.job_timeout = job_timeout

    @cached_property
    def hook(self) -> HpcHook:
        return HpcHook(self.conn_id)

    @classmethod
    def for_hook(cls, hook: HpcHook, **options: Any) -> HpcFileSystem:
        """A filesystem (not cached by fsspec) that uses ``hook`` (an operator's)."""
        fs = cls(hook.hpc_conn_id, skip_instance_cache=True, **options)
        fs.__dict__["hook"] = hook
        return fs

    @property
    def fsid(self) -> str:
        return f"hpc-{self.conn_id}"

    # ------------------------------------------------------------------ paths

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = str(path[0] if isinstance(path, list) and len(path) == 1 else path)
        if text.startswith("hpc://"):
            text = text[len("hpc://") :]
            user, at, rest = text.partition("@")
            if at and "/" not in user:  # hpc://conn_id@system/path
                text = rest
        return text.rstrip("/") or cls.root_marker

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        text = str(path).removeprefix("hpc://")
        user, at, _ = text.partition("@")
        return {"conn_id": user} if at and user and "/" not in user else {}

    def split_path(self, path: str) -> tuple[str, str]:
        """``system/abs/path`` -> (system, ``/abs/path``); ``/abs/path`` -> default system."""
        text = self._strip_protocol(path)
        if text.startswith("/"):
            return self.hook.resolve_system(None), posixpath.normpath(text)
        system, _, rest = text.partition("/")
        if not system:
            raise ValueError(f"{path!r}: no system")
        return system, posixpath.normpath("/" + rest)

    def _join(self, system: str, remote: str, original: str) -> str:
        if self._strip_protocol(original).startswith("/"):
            return remote
        return f"{system}{remote}" if remote != "/" else system

    # ------------------------------------------------------------------ listing

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        system, remote = self.split_path(path)
        with _os_errors(path):
            entries = self.hook.ls(remote, system=system, show_hidden=True)
            info = self.info(path) if len(entries) == 1 else None
        if info is not None and info["type"] != "directory":
            return [info] if detail else [info["name"]]
        out: list[dict[str, Any]] = []
        for entry in entries:
            child = posixpath.join(remote, posixpath.basename(entry.name.rstrip("/")))
            out.append(
                {
                    "name": self._join(system, child, path),
                    "size": int(entry.size or 0),
                    "type": _TYPES.get((entry.type or "-")[0], "other"),
                    "link_target": entry.link_target,
                    "permissions": entry.permissions,
                    "last_modified": entry.last_modified,
                }
            )
        out.sort(key=lambda e: str(e["name"]))
        return out if detail else [e["name"] for e in out]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        system, remote = self.split_path(path)
        with _os_errors(path):
            st = self.hook.stat(remote, system=system, dereference=True)
        mode = st.mode or 0
        kind = "directory" if stat_module.S_ISDIR(mode) else "file"
        return {
            "name": self._join(system, remote, path),
            "size": st.size if kind == "file" else 0,
            "type": kind,
            "mode": mode,
            "uid": st.uid,
            "gid": st.gid,
            "mtime": st.mtime,
            "atime": st.atime,
            "ctime": st.ctime,
            "created": st.ctime,
            "islink": False,
        }

    def modified(self, path: str) -> datetime.datetime:
        mtime = self.info(path)["mtime"]
        return datetime.datetime.fromtimestamp(mtime or 0, tz=datetime.UTC)

    def created(self, path: str) -> datetime.datetime:
        ctime = self.info(path)["ctime"]
        return datetime.datetime.fromtimestamp(ctime or 0, tz=datetime.UTC)

    def checksum(self, path: str) -> int:
        """The server's SHA-256 of the file, as an int (fsspec's convention)."""
        return int(self.sha256(path), 16)

    def sha256(self, path: str) -> str:
        system, remote = self.split_path(path)
        with _os_errors(path):
            answer = self.hook.checksum(remote, system=system)
        if answer.hashlib_name != "sha256":
            raise HpcChecksumError(f"{path}: the server hashes with {answer.algorithm}")
        return answer.checksum.lower()

    def ukey(self, path: str) -> str:
        info = self.info(path)
        return hashlib.sha256(f"{info['size']}-{info['mtime']}-{info['mode']}".encode()).hexdigest()

    # ------------------------------------------------------------------ changing

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        system, remote = self.split_path(path)
        with _os_errors(path):
            self.hook.mkdir(remote, system=system, parents=create_parents)
        self.invalidate_cache(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        if not exist_ok and self.exists(path):
            raise FileExistsError(path)
        self.mkdir(path, create_parents=True)

    def rmdir(self, path: str) -> None:
        if self.ls(path, detail=False):
            raise OSError(f"directory not empty: {path}")
        self._rm(path)

    def _rm(self, path: str) -> None:
        system, remote = self.split_path(path)
        with _os_errors(path):
            self.hook.rm(remote, system=system)
        self.invalidate_cache(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Remove files; a directory (with everything in it) only with ``recursive``.
        The server removes a tree in one call (``ops/rm``)."""
        for one in [path] if isinstance(path, str) else list(path):
            if not recursive and self.isdir(one) and self.ls(one, detail=False):
                raise IsADirectoryError(f"{one} is a non-empty directory (use recursive=True)")
            self._rm(one)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """On one system: the server's ``transfer/cp`` job, waited for; else streamed."""
        self._transfer("cp", path1, path2)

    def mv(self, path1: str, path2: str, recursive: bool = False, **kwargs: Any) -> None:
        """On one system: the server's ``transfer/mv`` job (any tree); else copy + rm."""
        system1, _ = self.split_path(path1)
        system2, _ = self.split_path(path2)
        if system1 != system2:
            self.copy(path1, path2, recursive=recursive)
            self.rm(path1, recursive=recursive)
            return
        self._transfer("mv", path1, path2)

    def _transfer(self, op: str, path1: str, path2: str) -> None:
        system1, source = self.split_path(path1)
        system2, target = self.split_path(path2)
        if system1 != system2:
            with self.open(path1, "rb") as src, self.open(path2, "wb") as dst:
                while chunk := src.read(self.block_size):
                    dst.write(chunk)
            return
        start = self.hook.copy if op == "cp" else self.hook.move
        with _os_errors(path1):
            job = start(source, target, system=system1)
        summary = self.hook.wait_for_job(
            job.job_id,
            system=job.system or system1,
            poll_interval=self.job_poll_interval,
            timeout=self.job_timeout,
        )
        if not summary.succeeded:
            raise OSError(f"{op} {path1} -> {path2}: job {job.job_id} ended {summary.state}")
        self.invalidate_cache(path2)

    # ------------------------------------------------------------------ data

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> HpcFile:
        verify = kwargs.pop("verify", self.verify_checksums)
        if mode == "rb":
            with _os_errors(path):
                info = self.info(path)
            if info["type"] == "directory":
                raise IsADirectoryError(path)
            kwargs.setdefault("size", info["size"])
        return HpcFile(self, path, mode, block_size, verify=verify, **kwargs)

    def put_file(self, lpath: str, rpath: str, callback: Any = None, **kwargs: Any) -> str | None:
        """Upload a local file: ``ops/upload`` streamed, or the resumable tus flow for
        large files; then the server's SHA-256 is compared with the local one (returned)."""
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return None
        system, remote = self.split_path(rpath)
        with open(lpath, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            digest = transfer.sha256_of(source)
            if callback is not None:
                callback.set_size(size)
            with _os_errors(rpath):
                if size >= self.large_file_size:
                    progress = callback.absolute_update if callback is not None else None
                    transfer.tus_upload(
                        self.hook, system, remote, source, size, digest, on_progress=progress
                    )
                else:
                    self.hook.upload(remote, source, system=system)
        if self.verify_checksums:
            self.verify(rpath, digest, size)
        if callback is not None:
            callback.absolute_update(size)
        self.invalidate_cache(rpath)
        return digest

    def get_file(
        self, rpath: str, lpath: str, callback: Any = None, outfile: Any = None, **kwargs: Any
    ) -> str | None:
        """Download to a local file (a temporary name, renamed once the checksum matched);
        return the SHA-256."""
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return None
        if outfile is not None:
            return self._copy_into(rpath, outfile, callback)
        directory, name = os.path.split(os.path.abspath(lpath))
        partial = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with open(partial, "wb") as sink:
                digest = self._copy_into(rpath, sink, callback)
            os.replace(partial, lpath)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return digest

    def _copy_into(self, rpath: str, sink: Any, callback: Any) -> str:
        hasher = hashlib.sha256()
        # no read-ahead cache: each read is one piece of the stream, verified at the end
        with self.open(rpath, "rb", cache_type="none") as source:
            if callback is not None:
                callback.set_size(source.size)
            while chunk := source.read(self.block_size):
                sink.write(chunk)
                hasher.update(chunk)
                if callback is not None:
                    callback.relative_update(len(chunk))
            if source.size == 0 and self.verify_checksums:
                self.verify(rpath, hasher.hexdigest(), 0)
        return hasher.hexdigest()

    # ------------------------------------------------------------------ helpers

    def signed_url(self, system: str, remote: str) -> str:
        with _os_errors(remote):
            return transfer.signed_download_url(self.hook, system, remote)

    def verify(self, path: str, local_sha256: str, size: int) -> None:
        """Raise :class:`HpcChecksumError` unless the server's SHA-256 is ``local_sha256``."""
        remote = self.sha256(path)
        if remote != local_sha256.lower():
            raise HpcChecksumError(
                f"{path}: sha256 local {local_sha256} != cluster {remote} ({size} bytes)"
            )
        self.hook.log.debug("%s verified: sha256 %s (%d bytes)", path, remote, size)


class _os_errors:
    """API errors as the ``OSError`` subclasses fsspec and pathlib callers expect."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, HpcNotFoundError):
            raise FileNotFoundError(2, exc.message, self.path) from exc
        if isinstance(exc, HpcApiError) and exc.status_code == 403:
            raise PermissionError(13, exc.message, self.path) from exc


def get_fs(conn_id: str | None, storage_options: dict[str, Any] | None = None) -> HpcFileSystem:
    """Airflow's entry (``filesystems`` in the provider info): the connection's filesystem."""
    return HpcFileSystem(conn_id=conn_id, **(storage_options or {}))


class HpcPath(UPath):
    """universal_pathlib's generic path for ``hpc://`` (registered so that it does not warn)."""

    __slots__ = ()


# The class itself (not its name) in fsspec's registry: universal_pathlib then reads
# path syntax (``_strip_protocol``, the root marker) from it.
fsspec.register_implementation("hpc", HpcFileSystem, clobber=True)
register_upath("hpc", HpcPath, clobber=True)
