"""A fake cluster behind the real server's interfaces, for the provider's unit tests.

The server application (``hpcgate.api.app``) runs for real: routes, edge middleware, token
validation, account policy, keyed submissions and wire models. Only what it would reach
over SSH is faked: ``FakeScheduler`` implements the ``Scheduler`` protocol with jobs whose
states follow a plan (each lookup advances one step), ``MemoryFilesystem`` the
``Filesystem`` interface over in-memory files, both behind the server's path policy and
error types.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from hpcgate import errors
from hpcgate.cluster.remote import CommandRunner
from hpcgate.compute.jobs import TERMINAL_STATES
from hpcgate.compute.scheduler.models import (
    Job,
    JobDescription,
    JobMetadata,
    JobStatus,
    JobTime,
    Node,
    Partition,
    Reservation,
    UserInfo,
)
from hpcgate.compute.scheduler.reports import JobAccounting, JobPreflight
from hpcgate.config import FilesystemLimits
from hpcgate.filesystem.base import Filesystem, ReadStream
from hpcgate.filesystem.identity import FileIdentity
from hpcgate.filesystem.models import CompressionType, File, FileChecksum, FileContent, FileStat
from hpcgate.filesystem.paths import PathPolicy
from hpcgate.filesystem.staging import Staged

USER = "hpcuser"
HOME = f"/scratch/{USER}"


@dataclass
class FakeJob:
    job_id: str
    name: str
    working_directory: str
    plan: list[str]
    exit_code: int = 0
    description: JobDescription | None = None
    comment: str | None = None
    polls: int = 0

    @property
    def state(self) -> str:
        return self.plan[min(self.polls, len(self.plan) - 1)]

    def model(self) -> Job:
        ended = self.state not in ("PENDING", "RUNNING")
        return Job(
            job_id=self.job_id,
            name=self.name,
            status=JobStatus(state=self.state, exit_code=self.exit_code if ended else None),
            time=JobTime(elapsed=1),
            allocation_nodes=1,
            cluster="cluster",
            nodes="n1",
            partition="debug",
            user=USER,
            working_directory=self.working_directory,
        )


@dataclass(frozen=True)
class Listed:
    raw_id: str
    job: Job


def _unsupported(what: str) -> NoReturn:
    raise errors.BadRequest(f"the fake cluster does not {what}")


class FakeCluster:
    """One user's jobs and files; tests read and change them directly."""

    def __init__(self) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/scratch", HOME}
        self.next_id = 1000
        self.plan = ["PENDING", "RUNNING", "COMPLETED"]
        self.exit_code = 0
        self.bad_checksum = False
        #: called with each job the scheduler accepts (to simulate what it writes)
        self.on_submit: Callable[[FakeJob], None] | None = None

    def add_job(
        self, name: str = "external", plan: list[str] | None = None, exit_code: int = 0
    ) -> FakeJob:
        job_id = str(self.next_id)
        self.next_id += 1
        job = FakeJob(job_id, name, HOME, list(plan or self.plan), exit_code)
        self.jobs[job_id] = job
        self.files[f"{HOME}/slurm-{job_id}.out"] = b"line 1\nline 2\nresult=42\n"
        self.files[f"{HOME}/slurm-{job_id}.err"] = b"warning: something\nerror: boom\n"
        return job

    def job(self, job_id: str) -> FakeJob:
        if job_id not in self.jobs:
            raise errors.NotFound(f"Job not found: {job_id}")
        return self.jobs[job_id]


class FakeScheduler:
    """The ``Scheduler`` protocol over ``FakeCluster.jobs``; the runner is ignored."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    async def submit(
        self, runner: CommandRunner, description: JobDescription, *, comment: str | None = None
    ) -> str:
        job = self.cluster.add_job(description.name or "job", exit_code=self.cluster.exit_code)
        job.working_directory = description.working_directory
        job.description, job.comment = description, comment
        if description.name and description.name.startswith("hpcgate-transfer-"):
            ok = self._run_transfer(description.script or "")
            job.plan, job.exit_code = ["RUNNING", "COMPLETED" if ok else "FAILED"], 0 if ok else 1
        if self.cluster.on_submit is not None:
            self.cluster.on_submit(job)
        return job.job_id

    def _run_transfer(self, script: str) -> bool:
        """Do what a transfer job's ``mv``/``cp`` line says; False where it would fail."""
        for line in script.splitlines():
            words = shlex.split(line.removeprefix("if ").removesuffix("; then"))
            if words[:1] in (["mv"], ["cp"]) and "--" in words:
                source, target = words[-2:]
                break
        else:
            raise AssertionError(f"the fake cluster cannot run this transfer:\n{script}")
        files, dirs = self.cluster.files, self.cluster.dirs
        if target in dirs:
            target = posixpath.join(target, posixpath.basename(source))
        if source not in files or posixpath.dirname(target) not in dirs:
            return False
        files[target] = files[source] if words[0] == "cp" else files.pop(source)
        return True

    async def active_jobs(
        self, runner: CommandRunner, *, users: Sequence[str] = (), job_ids: Sequence[str] = ()
    ) -> Sequence[Listed]:
        return [
            Listed(job.job_id, job.model())
            for job in self.cluster.jobs.values()
            if not job_ids or job.job_id in job_ids
        ]

    async def accounted_jobs(self, runner: CommandRunner, job_ids: Sequence[str]) -> list[Job]:
        return [
            job.model()
            for job in self.cluster.jobs.values()
            if job.job_id in job_ids and job.state in TERMINAL_STATES
        ]

    def drop_stale(self, listed: Sequence[Job], accounted: Sequence[Job]) -> list[Job]:
        return list(accounted)

    async def jobs_with_comment(
        self, runner: CommandRunner, comment: str, *, since: int
    ) -> list[str]:
        return [j.job_id for j in self.cluster.jobs.values() if j.comment == comment]

    async def jobs(
        self,
        runner: CommandRunner,
        *,
        all_users: bool = False,
        name: str | None = None,
        account: str | None = None,
        time_window: str | None = None,
    ) -> list[Job]:
        return [j.model() for j in self.cluster.jobs.values() if name is None or j.name == name]

    async def job(self, runner: CommandRunner, job_id: str) -> Job:
        job = self.cluster.job(job_id)
        answer = job.model()
        job.polls += 1
        return answer

    async def job_entries(self, runner: CommandRunner, job_id: str) -> list[Job]:
        return [await self.job(runner, job_id)]

    async def cancel(self, runner: CommandRunner, job_id: str) -> None:
        job = self.cluster.job(job_id)
        if job.state in ("PENDING", "RUNNING"):
            job.plan, job.polls, job.exit_code = ["CANCELLED"], 0, 15

    async def metadata(self, runner: CommandRunner, job_id: str) -> JobMetadata:
        self.cluster.job(job_id)
        return JobMetadata(
            job_id=job_id,
            script="#!/bin/bash\n",
            standard_output=f"slurm-{job_id}.out",
            standard_error=f"{HOME}/slurm-{job_id}.err",
        )

    async def attach(self, runner: CommandRunner, job_id: str, command: str) -> None:
        _unsupported("attach")

    async def nodes(self, runner: CommandRunner) -> list[Node]:
        return []

    async def partitions(
        self, runner: CommandRunner, *, show_hidden: bool = False
    ) -> list[Partition]:
        return []

    async def reservations(self, runner: CommandRunner) -> list[Reservation]:
        return []

    async def user_info(self, runner: CommandRunner) -> UserInfo:
        _unsupported("report user info")

    async def ping(self, runner: CommandRunner) -> None:
        return None

    async def ping_accounting(self, runner: CommandRunner) -> None:
        return None

    async def preflight(self, runner: CommandRunner, description: JobDescription) -> JobPreflight:
        """Every job would start at once on the fake's one node (nothing is submitted)."""
        return JobPreflight(valid=True, expected_start=0, nodes="fake", processors=1)

    async def accounting(self, runner: CommandRunner, job_id: str) -> list[JobAccounting]:
        """An ended job's record with what the fake knows (state, exit code, name);
        a job still running has none yet, as in Slurm's accounting before the end."""
        job = self.cluster.job(job_id)
        if job.state not in TERMINAL_STATES:
            raise errors.NotFound(f"Job not found: {job_id}")
        return [
            JobAccounting(
                job_id=job.job_id,
                name=job.name,
                user=USER,
                state=job.state,
                exit_code=job.exit_code,
                alloc_nodes=1,
                alloc_cpus=1,
            )
        ]


class _Bytes(ReadStream):
    def __init__(self, data: bytes, chunk: int = 65536) -> None:
        self._data, self._chunk = data, chunk
        self.length = self.file_size = len(data)
        self.offset = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._data), self._chunk):
            yield self._data[start : start + self._chunk]

    async def aclose(self) -> None:
        return None


class MemoryFilesystem(Filesystem):
    """``FakeCluster.files`` behind the system's real path policy and error types."""

    def __init__(self, cluster: FakeCluster, policy: PathPolicy, limits: FilesystemLimits) -> None:
        self.cluster, self.policy, self.limits = cluster, policy, limits

    def _data(self, raw: str) -> tuple[str, bytes]:
        path = self.policy.check(raw)
        if path not in self.cluster.files:
            raise errors.NotFound(f"No such file or directory: {path}")
        return path, self.cluster.files[path]

    def _stat(self, path: str) -> FileStat:
        if path in self.cluster.files:
            mode, size = 0o100644, len(self.cluster.files[path])
        elif path in self.cluster.dirs:
            mode, size = 0o40755, 4096
        else:
            raise errors.NotFound(f"No such file or directory: {path}")
        return FileStat(
            mode=mode, ino=0, dev=0, nlink=1, uid=1000, gid=1000, size=size,
            atime=0, mtime=0, ctime=0,
        )  # fmt: skip

    def _entry(self, path: str) -> File:
        stat = self._stat(path)
        kind = "d" if path in self.cluster.dirs else "-"
        return File(
            name=path, type=kind, user=USER, group=USER, permissions="rw-r--r--",
            last_modified="2026-01-01T00:00:00", size=str(stat.size),
        )  # fmt: skip

    # -- reading used by the provider --------------------------------------------

    async def stat(self, path: str, *, dereference: bool = False) -> FileStat:
        return self._stat(self.policy.check(path))

    async def describe(
        self, path: str, *, numeric_uid: bool = False, dereference: bool = False
    ) -> File:
        return self._entry(self.policy.check(path))

    async def ls(
        self,
        path: str,
        *,
        show_hidden: bool = False,
        numeric_uid: bool = False,
        recursive: bool = False,
        dereference: bool = False,
    ) -> list[File]:
        directory = self.policy.check(path)
        if directory not in self.cluster.dirs:
            return [self._entry(directory)]
        children = sorted(
            p for p in {*self.cluster.files, *self.cluster.dirs}
            if posixpath.dirname(p) == directory and p != directory
        )  # fmt: skip
        return [self._entry(p).model_copy(update={"name": posixpath.basename(p)}) for p in children]

    async def tail(
        self,
        path: str,
        *,
        bytes_: int | None = None,
        lines: int | None = None,
        skip_heading: bool = False,
    ) -> FileContent:
        _, data = self._data(path)
        text = "".join(data.decode().splitlines(keepends=True)[-(lines or 10) :])
        return FileContent(content=text, content_type="lines", start_position=0, end_position=0)

    async def head(
        self,
        path: str,
        *,
        bytes_: int | None = None,
        lines: int | None = None,
        skip_trailing: bool = False,
    ) -> FileContent:
        _, data = self._data(path)
        text = "".join(data.decode().splitlines(keepends=True)[: lines or 10])
        return FileContent(content=text, content_type="lines", start_position=0, end_position=0)

    async def view(self, path: str, *, offset: int = 0, size: int | None = None) -> str:
        _, data = self._data(path)
        return data[offset : offset + (size if size is not None else len(data))].decode()

    async def read_range(self, path: str, offset: int, length: int) -> bytes:
        return self._data(path)[1][offset : offset + length]

    async def open_read(
        self,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        bound: FileIdentity | None = None,
    ) -> ReadStream:
        return _Bytes(self._data(path)[1])

    async def checksum(self, path: str) -> FileChecksum:
        _, data = self._data(path)
        extra = b"x" if self.cluster.bad_checksum else b""
        return FileChecksum(checksum=hashlib.sha256(data + extra).hexdigest())

    async def home(self) -> str:
        return HOME

    # -- writing used by the provider --------------------------------------------

    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        offset: int = 0,
        truncate: bool = True,
        max_size: int | None = None,
        keep_partial: bool = False,
    ) -> int:
        target = self.policy.check(path)
        if posixpath.dirname(target) not in self.cluster.dirs:
            raise errors.NotFound(f"No such file or directory: {posixpath.dirname(target)}")
        data = b"".join([chunk async for chunk in chunks])
        self.cluster.files[target] = data
        return len(data)

    async def mkdir(self, path: str, *, parents: bool = False) -> File:
        target = self.policy.check(path)
        if target in self.cluster.dirs or target in self.cluster.files:
            if parents and target in self.cluster.dirs:
                return self._entry(target)
            raise errors.BadRequest(f"File exists: {target}")
        if not parents and posixpath.dirname(target) not in self.cluster.dirs:
            raise errors.NotFound(f"No such file or directory: {target}")
        walk = target
        while walk not in self.cluster.dirs and self.policy.root_of(walk) is not None:
            self.cluster.dirs.add(walk)
            walk = posixpath.dirname(walk)
        return self._entry(target)

    async def remove(self, path: str) -> None:
        target = self.policy.check(path)
        if self.cluster.files.pop(target, None) is not None:
            return
        if target not in self.cluster.dirs:
            raise errors.NotFound(f"No such file or directory: {target}")
        inside = target + "/"
        self.cluster.dirs = {
            d for d in self.cluster.dirs if d != target and not d.startswith(inside)
        }
        for name in [f for f in self.cluster.files if f.startswith(inside)]:
            del self.cluster.files[name]

    async def rename(self, source: str, target: str) -> None:
        src, dst = self.policy.check(source), self.policy.check(target)
        self.cluster.files[dst] = self._data(src)[1]
        del self.cluster.files[src]

    async def copy(self, source: str, target: str) -> None:
        src, dst = self.policy.check(source), self.policy.check(target)
        self.cluster.files[dst] = self._data(src)[1]

    # -- the rest of the interface: not what the provider calls -------------------

    async def readlink(self, path: str) -> str:
        _unsupported("read links")

    async def identify(self, path: str) -> FileIdentity:
        _unsupported("identify files")

    async def file_type(self, path: str) -> str:
        _unsupported("run file")

    async def check_writable(self, path: str, *, follow_final: bool, what: str = "path") -> str:
        return self.policy.check(path, what=what)

    async def stage(self, path: str, size: int) -> tuple[str, Staged]:
        _unsupported("stage uploads")

    async def write_staged(
        self,
        staged: Staged,
        chunks: AsyncIterable[bytes],
        *,
        offset: int,
        max_size: int,
        on_written: Callable[[bytes, int], Awaitable[None]] | None = None,
    ) -> int:
        _unsupported("stage uploads")

    async def commit_staged(self, staged: Staged, target: str) -> None:
        _unsupported("stage uploads")

    async def discard_staged(self, staged: Staged) -> None:
        _unsupported("stage uploads")

    async def publish(self, path: str, data: bytes) -> None:
        self.cluster.files[self.policy.check(path)] = data

    async def chmod(self, path: str, mode: str) -> File:
        return self._entry(self.policy.check(path))  # modes are not modelled

    async def chown(self, path: str, owner: str = "", group: str = "") -> File:
        _unsupported("chown")

    async def symlink(self, target: str, link: str) -> File:
        _unsupported("symlink")

    async def compress(
        self,
        source: str,
        target: str,
        *,
        match_pattern: str | None = None,
        dereference: bool = False,
        compression: CompressionType = "gzip",
    ) -> None:
        _unsupported("compress")

    async def extract(
        self, source: str, target: str, *, compression: CompressionType = "gzip"
    ) -> None:
        _unsupported("extract")
