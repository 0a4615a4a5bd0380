"""The long-lived objects behind the routes, built once from the configuration.

``Services`` owns each of them and its lifecycle (``start``/``close``): the SSH pool,
per system the scheduler, the job watcher, the account policy and the filesystem's
shared state, the transfer service, health checks, keyed submissions and metrics.
Routes ask for them through ``hpcgate.api.dependencies``; they never build a backend.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from hpcgate.auth.accounts import AccountPolicy, build_policy
from hpcgate.auth.tokens import TokenValidator
from hpcgate.cluster.remote import CommandRunner
from hpcgate.cluster.sshpool import SshPool
from hpcgate.compute.idempotency import (
    IdempotencyStore,
    IdempotentSubmitter,
    SqliteIdempotencyStore,
)
from hpcgate.compute.scheduler.base import Scheduler
from hpcgate.compute.scheduler.slurm import SlurmScheduler
from hpcgate.compute.watcher import JobWatcher
from hpcgate.compute.watcher.lease import coordinator_factory
from hpcgate.config import FilesystemLimits, Settings, SystemSettings
from hpcgate.errors import ClusterUnreachable
from hpcgate.filesystem.base import Filesystem
from hpcgate.filesystem.sftp import SftpFilesystem, SystemState
from hpcgate.operations.health import HealthChecker, Probe
from hpcgate.operations.metrics import (
    SSH_FIGURES,
    Figure,
    Metrics,
    Reading,
    Readings,
    Share,
    command_source,
    pool_readings,
)
from hpcgate.transfer.service import TransferService

log = logging.getLogger(__name__)


_BANNER_LIMIT = 255  # RFC 4253: the version line is at most 255 bytes


async def _ssh_banner(host: str, port: int, timeout: float) -> None:
    """Healthy when the SSH server answers with its version banner."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=_BANNER_LIMIT + 1)
            try:
                banner = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterUnreachable(f"cannot connect to {host}:{port}: {exc}") from exc
    if not banner.startswith(b"SSH-"):
        raise ClusterUnreachable(f"{host}:{port} does not speak SSH")


_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+){1,3}(?:-[0-9A-Za-z.]+)?")


def parse_sinfo_version(output: str) -> str | None:
    """``sinfo --version`` ("slurm 22.05.8", "slurm-wlm 23.11.4") -> "22.05.8"; None
    for anything else (the text is shown to every caller, so only a version passes)."""
    words = output.split()
    if len(words) != 2 or _VERSION.fullmatch(words[1]) is None:
        return None
    return words[1]


def system_probes(
    system: SystemSettings, pool: SshPool, scheduler: Scheduler, versions: dict[str, str]
) -> list[Probe]:
    """SSH always; login, scheduler and filesystems when a service user is configured.

    Every probe runs as the system's ``service_user`` (whose login shell is the
    operator's), never as an API user: nothing a caller's shell prints can make a
    system look unhealthy, or set the scheduler version others see. A failed probe
    shows callers only its own fixed ``failure`` text; what the cluster printed
    goes to the server log (``hpcgate.operations.health``).
    """
    ssh = system.ssh
    user = system.service_user
    if user is None:
        return [
            Probe(
                "ssh",
                lambda: _ssh_banner(ssh.host, ssh.port, ssh.connect_timeout),
                failure="the SSH server did not answer",
            )
        ]
    runner = pool.runner(system.name, user)

    async def login() -> None:
        command_source.set("health")
        result = await runner.run(["true"])
        if not result.ok:
            raise ClusterUnreachable(
                f"login as {user} exited {result.exit_status}: {result.stderr.strip()}"
            )

    async def ping_scheduler() -> None:
        command_source.set("health")
        await scheduler.ping(runner)
        if system.name not in versions:
            result = await runner.run(["sinfo", "--version"])
            if result.ok:  # else: asked again next round
                version = parse_sinfo_version(result.stdout)
                if version is None:
                    log.warning(
                        "unexpected sinfo --version output on %s: %r",
                        system.name,
                        result.stdout[:200],
                    )
                versions[system.name] = version or "unknown"

    async def ping_accounting() -> None:
        command_source.set("health")
        await scheduler.ping_accounting(runner)

    def stat(path: str) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            command_source.set("health")
            async with pool.sftp(system.name, user) as sftp:
                await sftp.stat(path)

        return check

    return [
        Probe("ssh", login, failure="login as the service identity failed"),
        Probe("scheduler", ping_scheduler, failure="the scheduler did not answer"),
        Probe(
            "accounting",
            ping_accounting,
            failure="the Slurm accounting daemon (slurmdbd) did not answer: job states "
            "come from the controller alone, ended jobs' details wait",
            critical=False,
        ),
        *(
            Probe(
                "filesystem",
                stat(fs.path),
                path=fs.path,
                failure="the filesystem is not accessible to the service identity",
            )
            for fs in system.filesystems
        ),
    ]


WATCHER_FIGURES = {
    "interval": Figure(
        "hpcgate_watcher_interval_seconds", "Current interval between rounds", Share.LEADER
    ),
    "lag": Figure(
        "hpcgate_watcher_lag_seconds", "How late the next round is (0 on time)", Share.LEADER
    ),
    "data_age": Figure(
        "hpcgate_watcher_data_age_seconds", "Age of the oldest scope's data", Share.LEADER
    ),
    "views": Figure(
        "hpcgate_watcher_jobs_tracked", "Jobs (and arrays) the watcher tracks", Share.LEADER
    ),
    "scopes": Figure(
        "hpcgate_watcher_scopes",
        "Polling identities with interest (the leader's: every worker's interest)",
        Share.LEADER,
    ),
    "watched": Figure("hpcgate_watcher_jobs_watched", "Job ids clients are waiting on"),
    "sse": Figure("hpcgate_sse_subscribers", "Open event streams"),
    "longpoll": Figure("hpcgate_longpoll_waiters", "Waiting long-polls"),
}
"""The watcher's figures: what the leader's rounds see, and each worker's clients.
``watched`` is summed over workers (an id waited on from two counts twice)."""


def _watcher_readings(watchers: dict[str, JobWatcher]) -> Readings:
    def read() -> Iterable[Reading]:
        for system, watcher in watchers.items():
            stats = watcher.stats()
            leads = watcher.coordinator.leads()
            for key, figure in WATCHER_FIGURES.items():
                yield Reading(figure, system, stats[key], leads)

    return read


@dataclass
class Services:
    """Token validation, the SSH pool, per system a scheduler, a job watcher, an account
    policy and the filesystem's shared state; the transfer service, health checks,
    keyed submissions and metrics."""

    settings: Settings
    tokens: TokenValidator
    pool: SshPool
    schedulers: dict[str, Scheduler]
    health: HealthChecker
    scheduler_versions: dict[str, str] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    watchers: dict[str, JobWatcher] = field(default_factory=dict)
    submitter: IdempotentSubmitter | None = None
    accounts: dict[str, AccountPolicy] = field(default_factory=dict)
    """Per system (by configured name): which accounts tokens may act as."""
    filesystems: dict[str, SystemState] = field(default_factory=dict)
    """Per system: the path policy, the write guard, per-user names (``SystemState``)."""
    transfers: TransferService | None = None

    def filesystem(
        self, system: str, username: str, limits: FilesystemLimits | None = None
    ) -> Filesystem:
        """``username``'s filesystem on ``system`` (cheap: one per request)."""
        state = self.filesystems.get(system)
        if state is None:
            settings = self.settings.system(system)
            assert settings is not None, f"no system {system!r}"
            state = self.filesystems[system] = SystemState(settings)
        return SftpFilesystem(
            self.pool,
            state.system,
            username,
            self.pool.runner(system, username),
            state=state,
            limits=limits,
        )

    def runner(self, system: str, username: str) -> CommandRunner:
        """Runs commands on ``system`` as ``username``."""
        return self.pool.runner(system, username)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        metrics = Metrics()
        pool = SshPool(settings.systems, on_command=metrics.observe_command)
        schedulers: dict[str, Scheduler] = {
            system.name: SlurmScheduler(system.scheduler) for system in settings.systems
        }
        versions: dict[str, str] = {}
        probes = {
            system.name: system_probes(system, pool, schedulers[system.name], versions)
            for system in settings.systems
        }
        health = HealthChecker(
            probes,
            interval=settings.health.interval_seconds,
            timeout=settings.health.timeout_seconds,
            retry=settings.health.retry_seconds,
        )
        coordinator = coordinator_factory(settings)
        watchers = {
            system.name: JobWatcher(
                system,
                schedulers[system.name],
                functools.partial(pool.runner, system.name),
                metrics=metrics,
                coordinator=coordinator(system),
            )
            for system in settings.systems
            if system.watcher.enabled
        }
        submitter = IdempotentSubmitter(_idempotency_store(settings), settings.idempotency, metrics)
        accounts = {
            system.name: build_policy(system, functools.partial(pool.runner, system.name))
            for system in settings.systems
        }
        metrics.add_figures(list(SSH_FIGURES.values()), pool_readings(pool.stats))
        metrics.add_figures(list(WATCHER_FIGURES.values()), _watcher_readings(watchers))
        services = cls(
            settings,
            TokenValidator(settings.auth),
            pool,
            schedulers,
            health,
            versions,
            metrics,
            watchers,
            submitter,
            accounts,
            {system.name: SystemState(system) for system in settings.systems},
        )
        services.transfers = TransferService(
            settings,
            filesystem=services.filesystem,
            runner=services.runner,
            schedulers=schedulers,
        )
        return services

    async def start(self) -> None:
        await self.tokens.start()
        await self.pool.start()
        if self.submitter is not None:
            await self.submitter.start()
        await self.health.check_now()
        self.health.start()
        for watcher in self.watchers.values():
            watcher.start()
        if self.transfers is not None:
            await self.transfers.start()
        self.metrics.start()

    async def close(self) -> None:
        await self.metrics.close()
        if self.transfers is not None:
            await self.transfers.close()
        for watcher in self.watchers.values():
            await watcher.close()
        await self.health.stop()
        if self.submitter is not None:
            await self.submitter.close()
        for policy in self.accounts.values():
            await policy.close()
        await self.pool.close()
        await self.tokens.aclose()


def _idempotency_store(settings: Settings) -> IdempotencyStore:
    """The configured store: SQLite under ``state_dir`` or a shared Redis."""
    idempotency = settings.idempotency
    if idempotency.backend == "redis":
        assert idempotency.redis_url is not None  # the configuration checks it
        try:
            from hpcgate.compute.idempotency_redis import RedisIdempotencyStore
        except ImportError as exc:
            raise RuntimeError(
                "idempotency.backend redis needs the redis package: pip install 'hpcgate[redis]'"
            ) from exc
        return RedisIdempotencyStore(
            idempotency.redis_url.get_secret_value(),
            ttl_seconds=idempotency.ttl_hours * 3600,
            lease_seconds=idempotency.redis_lease_seconds,
            prefix=idempotency.redis_key_prefix,
        )
    path = idempotency.path or settings.state_path() / "idempotency.sqlite3"
    return SqliteIdempotencyStore(path)
