"""The transfer service: transfer jobs, the store of unfinished transfers, the URL signer.

One ``TransferService`` per application, owned by ``hpcgate.services.Services``
(``Services.transfers``), started and closed with it. Per request,
``TransferService.user(system, username)`` gives a ``UserSide``: the caller's
``Filesystem`` (the interface: the path policy, the write guard and the staged files
are the filesystem package's own), the caller's runner and the system's scheduler.

Transfer jobs run as the user on the system's ``scheduler.transfer_partition``, in
``transfer.job_directory`` (default ``<home>/.hpcgate/transfers``), which also holds
their logs ``<op>-<id>.out`` / ``.err`` and the completion markers of uploads.

Unfinished transfers are kept in ``transfer.store`` (``hpcgate.transfer.store``):
SQLite under the state directory, or the idempotency store's Redis for replicas.
The URL signing key is ``transfer.signing_key``, else one made once into the state
directory (``signing.load_or_create_key``). Started here: the beat that tells other
replicas this process is alive, and the reaper (``hpcgate.transfer.reaper``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from hpcgate.cluster.remote import CommandRunner
from hpcgate.compute.scheduler.base import Scheduler
from hpcgate.compute.scheduler.models import JobDescription
from hpcgate.config import FilesystemLimits, Settings, SystemSettings, TransferSettings
from hpcgate.errors import Forbidden, NotFound
from hpcgate.filesystem import staging
from hpcgate.filesystem.base import Filesystem
from hpcgate.filesystem.identity import FileIdentity
from hpcgate.filesystem.paths import join
from hpcgate.filesystem.staging import Staged
from hpcgate.transfer.models import TransferJob, TransferJobLogs
from hpcgate.transfer.reaper import Reaper
from hpcgate.transfer.signing import UrlSigner, load_or_create_key
from hpcgate.transfer.state import StateBackend
from hpcgate.transfer.state_sqlite import SqliteTransferState
from hpcgate.transfer.store import (
    BEAT_SECONDS,
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


#: (system, username, limits) -> that user's filesystem on the system
FilesystemFactory = Callable[[str, str, FilesystemLimits], Filesystem]
#: (system, username) -> runs commands on the system as the user
RunnerFactory = Callable[[str, str], CommandRunner]


class TransferService:
    """Long-lived transfer state of one application."""

    def __init__(
        self,
        settings: Settings,
        *,
        filesystem: FilesystemFactory,
        runner: RunnerFactory,
        schedulers: Mapping[str, Scheduler],
        clock: Callable[[], float] = time.time,
        backend: StateBackend | None = None,
    ) -> None:
        self.config: TransferSettings = settings.transfer
        self._filesystem = filesystem
        self._runner = runner
        self.schedulers = schedulers
        self._settings = settings
        self.store = TransferStore(
            backend or state_backend(settings),
            max_per_user=self.config.max_active_per_user,
            clock=clock,
        )
        self._signer: UrlSigner | None = None
        self.clock = clock
        self._systems = {system.name: system for system in settings.systems}
        self._limits = {system.name: _unlimited(system) for system in settings.systems}
        self.job_dirs: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.reaper = Reaper(self)

    @property
    def signer(self) -> UrlSigner:
        assert self._signer is not None, "the transfer service is not started"
        return self._signer

    async def start(self) -> None:
        key = self.config.signing_key
        if key is not None:
            secret = key.get_secret_value().encode()
        else:
            secret = await asyncio.to_thread(load_or_create_key, self._settings.state_path())
            if self._replicated():
                log.warning(
                    "transfer URLs are signed with the key in this server's state directory: "
                    "set transfer.signing_key so that every replica accepts them"
                )
        self._signer = UrlSigner(secret, clock=self.clock)
        await self.store.open()
        self._loops = [
            asyncio.create_task(self._beat_forever(), name="transfer-beat"),
            asyncio.create_task(self.reaper.run_forever(), name="transfer-reaper"),
        ]

    def _replicated(self) -> bool:
        return not isinstance(self.store.backend, SqliteTransferState)

    async def close(self) -> None:
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(BEAT_SECONDS)
            try:
                await self.store.beat()
            except Exception as exc:  # the store is away: try again next beat
                log.warning("transfer state: beat failed: %s", type(exc).__name__)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a best-effort background task (cleanups), kept until it ends."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def user(self, system: str, username: str) -> UserSide:
        return UserSide(self, self._systems[system], username)

    def side_of(self, transfer: Transfer) -> UserSide:
        return self.user(transfer.system, transfer.user)


def state_backend(settings: Settings) -> StateBackend:
    """``transfer.store``: SQLite under the state directory, or Redis (the idempotency
    store's connection) for replicas."""
    config, idempotency = settings.transfer, settings.idempotency
    redis = config.store == "redis" or (config.store == "auto" and idempotency.backend == "redis")
    if redis:
        if idempotency.redis_url is None:
            raise RuntimeError("transfer.store redis needs idempotency.redis_url")
        from hpcgate.transfer.state_redis import RedisTransferState

        return RedisTransferState(
            idempotency.redis_url.get_secret_value(), prefix=config.redis_key_prefix
        )
    return SqliteTransferState(config.store_path or settings.state_path() / "transfers.sqlite3")


def _unlimited(system: SystemSettings) -> FilesystemLimits:
    """The system's limits without the direct-transfer cap: transfers stream files of
    any size."""
    return system.filesystem_limits.model_copy(update={"max_ops_file_size": _UNLIMITED})


class UserSide:
    """One user's view of one system for transfers (cheap: make one per request)."""

    def __init__(self, service: TransferService, system: SystemSettings, username: str) -> None:
        self.service = service
        self.system = system
        self.username = username
        self.runner: CommandRunner = service._runner(system.name, username)
        self.fs: Filesystem = service._filesystem(
            system.name, username, service._limits[system.name]
        )

    @property
    def config(self) -> TransferSettings:
        return self.service.config

    # -- the job directory --------------------------------------------------------

    async def job_directory(self) -> str:
        """``transfer.job_directory`` for this user, checked by the policy and created."""
        key = (self.system.name, self.username)
        found = self.service.job_dirs.get(key)
        if found is not None:
            return found
        home = await self.fs.home()
        raw = self.config.job_directory.format(home=home, username=self.username)
        try:
            directory = self.fs.policy.check(raw, what="transfer job directory")
        except Forbidden as exc:
            raise Forbidden(
                f"{exc.message}; configure transfer.job_directory inside a filesystem"
            ) from None
        try:
            await self.fs.stat(directory, dereference=True)
        except NotFound:
            await self.fs.mkdir(directory, parents=True)
            await self.fs.chmod(directory, "700")  # logs and markers are the user's
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
        scheduler = self.service.schedulers[self.system.name]
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
        await self.fs.stat(path)
        return path

    async def writable(self, raw: str, what: str = "target path", *, follow: bool) -> str:
        """The policy-checked path, after the write guard (no symlink escapes)."""
        return await self.fs.check_writable(raw, follow_final=follow, what=what)

    # -- uploads: staged files and completion markers ----------------------------------

    async def prepare_upload(self, raw: str, size: int) -> tuple[str, Staged]:
        """(target, staged file) for a new upload of ``size`` bytes: checks, then the
        private staging directory and file beside the target (``filesystem.staging``)."""
        return await self.fs.stage(raw, size)

    async def put_in_place(self, staged: Staged, target: str) -> None:
        """Rename the staged file over ``target`` once it checks out (409 if it was
        swapped), keeping an existing regular target's mode."""
        await self.fs.commit_staged(staged, target)

    async def write_marker(self, marker: str, outcome: str) -> None:
        """Tell the upload's job how it ended (written aside, renamed: never half-read).

        The aside file is a new one (``O_EXCL``, a random name): nothing existing is
        opened for writing, even if the job directory is not private after all.
        """
        await self.fs.publish(marker, outcome.encode()[:1000])

    async def abandon(self, staged: Staged | None, marker: str | None, reason: str) -> None:
        """Best effort: remove an unfinished upload's staging, end its job's wait."""
        if staged is not None:
            with contextlib.suppress(Exception):
                await self.fs.discard_staged(staged)
        if marker:
            with contextlib.suppress(Exception):
                await self.write_marker(marker, f"failed: {reason}")

    async def regular_file(self, raw: str) -> tuple[str, FileIdentity]:
        """A readable regular file to download: its path and identity (see
        ``Filesystem.identify``), which the download URL is bound to."""
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
