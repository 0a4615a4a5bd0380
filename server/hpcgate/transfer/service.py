"""The transfer service: transfer jobs, the store of unfinished transfers, the URL signer.

One ``TransferService`` per application (``app.state.transfers``), started and closed
with it. Per request, ``TransferService.user(system, username)`` gives a ``UserSide``:
the caller's filesystem (``SftpFilesystem``, so the path policy and the SFTP code are
the filesystem package's own), the caller's runner and the system's scheduler.

Transfer jobs run as the user on the system's ``scheduler.transfer_partition``, in
``transfer.job_directory`` (default ``<home>/.hpcgate/transfers``), which also holds
their logs ``<op>-<id>.out`` / ``.err`` and the completion markers of uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import posixpath
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncssh

from hpcgate.cluster.remote import CommandRunner
from hpcgate.compute.scheduler.models import JobDescription
from hpcgate.config import Settings, SystemSettings, TransferSettings
from hpcgate.errors import BadRequest, Forbidden
from hpcgate.filesystem import staging
from hpcgate.filesystem.entries import is_dir
from hpcgate.filesystem.identity import FileIdentity
from hpcgate.filesystem.paths import WriteGuard, join, parent, shown, validate_filename
from hpcgate.filesystem.sftp import SftpFilesystem
from hpcgate.filesystem.sftp import _errors as sftp_errors
from hpcgate.filesystem.staging import Staged
from hpcgate.services import Services
from hpcgate.transfer.models import TransferJob, TransferJobLogs
from hpcgate.transfer.signing import UrlSigner
from hpcgate.transfer.store import (
    Download,
    MultipartUpload,
    ResumableUpload,
    Transfer,
    TransferStore,
    new_id,
)

log = logging.getLogger(__name__)

TEMP_PREFIX = staging.PREFIX
_UNLIMITED = 2**62
_SWEEP_SECONDS = 30.0


class TransferService:
    """Long-lived transfer state of one application."""

    def __init__(
        self, settings: Settings, services: Services, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config: TransferSettings = settings.transfer
        self.services = services
        key = self.config.signing_key
        if key is None:
            log.info("transfer URLs are signed with a key generated at start (none configured)")
        self.signer = UrlSigner(key.get_secret_value().encode() if key else None, clock=clock)
        self.store = TransferStore(max_per_user=self.config.max_active_per_user, clock=clock)
        self.clock = clock
        self._systems = {system.name: _unlimited(system) for system in settings.systems}
        self._guards: dict[str, WriteGuard] = {}
        self.job_dirs: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="transfer-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a best-effort background task (cleanups), kept until it ends."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def user(self, system: str, username: str) -> UserSide:
        return UserSide(self, self._systems[system], username)

    def side_of(self, transfer: Transfer) -> UserSide:
        return self.user(transfer.system, transfer.user)

    def guard(self, side: UserSide) -> WriteGuard:
        found = self._guards.get(side.system.name)
        if found is None:
            found = self._guards[side.system.name] = WriteGuard(side.fs.policy)
        return found

    # -- expiry -----------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            self.sweep()

    def sweep(self) -> None:
        """Forget expired transfers; remove their temporary files, end their jobs' wait."""
        for transfer in self.store.expired():
            if transfer.state != "open":
                continue
            side = self.side_of(transfer)
            if isinstance(transfer, MultipartUpload):
                self.spawn(side.abandon(transfer.staged, transfer.marker, "expired"))
            elif isinstance(transfer, ResumableUpload):
                self.spawn(side.abandon(transfer.staged, None, "expired"))


def _unlimited(system: SystemSettings) -> SystemSettings:
    """The system with no direct-transfer cap: transfers stream files of any size."""
    limits = system.filesystem_limits.model_copy(update={"max_ops_file_size": _UNLIMITED})
    return system.model_copy(update={"filesystem_limits": limits})


class UserSide:
    """One user's view of one system for transfers (cheap: make one per request)."""

    def __init__(self, service: TransferService, system: SystemSettings, username: str) -> None:
        self.service = service
        self.system = system
        self.username = username
        pool = service.services.pool
        self.runner: CommandRunner = pool.runner(system.name, username)
        self.fs = SftpFilesystem(pool, system, username, self.runner)

    @property
    def config(self) -> TransferSettings:
        return self.service.config

    @contextlib.asynccontextmanager
    async def sftp(self) -> AsyncIterator[asyncssh.SFTPClient]:
        async with self.service.services.pool.sftp(self.system.name, self.username) as client:
            yield client

    # -- the job directory --------------------------------------------------------

    async def job_directory(self) -> str:
        """``transfer.job_directory`` for this user, checked by the policy and created."""
        key = (self.system.name, self.username)
        found = self.service.job_dirs.get(key)
        if found is not None:
            return found
        async with self.sftp() as sftp:
            with sftp_errors("~"):
                home = await sftp.realpath(".")
        raw = self.config.job_directory.format(home=home, username=self.username)
        try:
            directory = self.fs.policy.check(raw, what="transfer job directory")
        except Forbidden as exc:
            raise Forbidden(
                f"{exc.message}; configure transfer.job_directory inside a filesystem"
            ) from None
        async with self.sftp() as sftp:
            try:
                await sftp.stat(directory)
            except asyncssh.SFTPNoSuchFile:
                await self.fs.mkdir(directory, parents=True)
                with sftp_errors(directory):
                    await sftp.chmod(directory, 0o700)  # logs and markers are the user's
        self.service.job_dirs[key] = directory
        return directory

    async def submit(
        self,
        operation: str,
        script: str,
        *,
        transfer_id: str | None = None,
        account: str | None = None,
        time_limit_minutes: int | None = None,
    ) -> TransferJob:
        """Submit ``script`` as a transfer job of the user; its ``transferJob`` shape."""
        directory = await self.job_directory()
        stem = join(directory, f"{operation}-{transfer_id or new_id()}")
        output, error = stem + ".out", stem + ".err"
        minutes = time_limit_minutes or self.config.job_time_limit_minutes
        description = JobDescription(
            name=f"hpcgate-transfer-{operation}",
            working_directory=directory,
            script=script,
            partition=self.system.scheduler.transfer_partition,
            account=account,
            standard_output=_slurm_literal(output),
            standard_error=_slurm_literal(error),
            time_limit=str(minutes),
        )
        scheduler = self.service.services.schedulers[self.system.name]
        job_id = await scheduler.submit(self.runner, description)
        log.info(
            "transfer job submitted",
            extra={"operation": operation, "job_id": job_id, "user": self.username},
        )
        return TransferJob(
            job_id=job_id,
            system=self.system.name,
            working_directory=directory,
            logs=TransferJobLogs(output_log=output, error_log=error),
        )

    # -- checks before a job is submitted ------------------------------------------

    async def existing(self, raw: str, what: str = "source path") -> str:
        """The policy-checked path, after checking it exists (404 otherwise)."""
        path = self.fs.policy.check(raw, what=what)
        async with self.sftp() as sftp:
            with sftp_errors(path):
                await sftp.lstat(path)
        return path

    async def writable(self, raw: str, what: str = "target path", *, follow: bool) -> str:
        """The policy-checked path, after the write guard (no symlink escapes)."""
        path = self.fs.policy.check(raw, what=what)
        async with self.sftp() as sftp:
            with sftp_errors(path):
                await self.service.guard(self).check(sftp, path, follow_final=follow)
        return path

    # -- uploads: staged files and completion markers ----------------------------------

    async def prepare_upload(self, raw: str, size: int) -> tuple[str, Staged]:
        """(target, staged file) for a new upload of ``size`` bytes: checks, then the
        private staging directory and file beside the target (``filesystem.staging``)."""
        target = self.fs.policy.check(raw)
        directory, name = parent(target), posixpath.basename(target)
        validate_filename(name)
        guard = self.service.guard(self)
        async with self.sftp() as sftp:
            with sftp_errors(target):
                await guard.check(sftp, target, follow_final=False)
            with sftp_errors(directory):
                if not is_dir(await sftp.stat(directory)):
                    raise BadRequest(f"Not a directory: {shown(directory)}")
            await staging.check_replaceable(sftp, target)
            staged, handle = await staging.create(sftp, target, size=size)
            with sftp_errors(directory):
                await handle.close()
        return target, staged

    async def put_in_place(self, staged: Staged, target: str) -> None:
        """Rename the staged file over ``target`` once it checks out (409 if it was
        swapped), keeping an existing regular target's mode."""
        guard = self.service.guard(self)
        async with self.sftp() as sftp:
            with sftp_errors(target):
                await guard.check(sftp, target, follow_final=False)
            await staging.commit(sftp, staged, target)

    async def write_marker(self, marker: str, outcome: str) -> None:
        """Tell the upload's job how it ended (written aside, renamed: never half-read).

        The aside file is a new one (``O_EXCL``, a random name): nothing existing is
        opened for writing, even if the job directory is not private after all.
        """
        aside = f"{marker}.{secrets.token_hex(8)}.new"
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
        async with self.sftp() as sftp:
            with sftp_errors(marker):
                async with sftp.open(aside, flags, encoding=None) as handle:
                    await handle.write(outcome.encode()[:1000])
                await sftp.posix_rename(aside, marker)

    async def abandon(self, staged: Staged | None, marker: str | None, reason: str) -> None:
        """Best effort: remove an unfinished upload's staging, end its job's wait."""
        if staged is not None:
            with contextlib.suppress(Exception):
                async with self.sftp() as sftp:
                    await staging.discard(sftp, staged)
        if marker:
            with contextlib.suppress(Exception):
                await self.write_marker(marker, f"failed: {reason}")

    async def regular_file(self, raw: str) -> tuple[str, FileIdentity]:
        """A readable regular file to download: its path and identity (see
        ``SftpFilesystem.identify``), which the download URL is bound to."""
        path = self.fs.policy.check(raw, what="source path")
        return path, await self.fs.identify(path)


def part_size_for(config: TransferSettings, size: int) -> int:
    """The configured part size, grown (in MiB steps) so the parts fit ``max_parts``."""
    needed = math.ceil(size / config.max_parts) if size else 0
    if needed <= config.part_size:
        return config.part_size
    mib = 1024 * 1024
    return math.ceil(needed / mib) * mib


def _slurm_literal(path: str) -> str:
    """A path for --output/--error: '%' starts a Slurm pattern, so it is doubled."""
    return path.replace("%", "%%")


__all__ = [
    "TEMP_PREFIX",
    "Download",
    "MultipartUpload",
    "ResumableUpload",
    "TransferService",
    "UserSide",
    "part_size_for",
]
