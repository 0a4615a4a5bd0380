"""The long-lived objects behind the routes, built once from the configuration."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from hpcgate.auth import TokenValidator
from hpcgate.config import Settings, SystemSettings
from hpcgate.errors import ClusterUnreachable
from hpcgate.health import HealthChecker, Probe
from hpcgate.idempotency import IdempotencyStore, IdempotentSubmitter, SqliteIdempotencyStore
from hpcgate.metrics import Metrics, command_source, gauge, pool_gauges
from hpcgate.scheduler.base import Scheduler
from hpcgate.scheduler.slurm import SlurmScheduler
from hpcgate.sshpool import SshPool
from hpcgate.watcher import JobWatcher


async def _ssh_banner(host: str, port: int, timeout: float) -> None:
    """Healthy when the SSH server answers with its version banner."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                banner = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise ClusterUnreachable(f"cannot connect to {host}:{port}: {exc}") from exc
    if not banner.startswith(b"SSH-"):
        raise ClusterUnreachable(f"{host}:{port} does not speak SSH")


def system_probes(
    system: SystemSettings, pool: SshPool, scheduler: Scheduler, versions: dict[str, str]
) -> list[Probe]:
    """SSH always; login, scheduler and filesystems when a probe user is configured."""
    ssh = system.ssh
    user = system.service_user
    if user is None:
        return [Probe("ssh", lambda: _ssh_banner(ssh.host, ssh.port, ssh.connect_timeout))]
    runner = pool.runner(system.name, user)

    async def login() -> None:
        command_source.set("health")
        result = await runner.run(["true"])
        if not result.ok:
            raise ClusterUnreachable(f"login as {user} failed: {result.stderr.strip()}")

    async def ping_scheduler() -> None:
        command_source.set("health")
        await scheduler.ping(runner)
        if system.name not in versions:
            version = await runner.run(["sinfo", "--version"])
            if version.ok and version.stdout.split():
                # "slurm-wlm 22.05.8" -> "22.05.8"
                versions[system.name] = version.stdout.split()[-1]

    def stat(path: str) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            async with pool.sftp(system.name, user) as sftp:
                await sftp.stat(path)

        return check

    return [
        Probe("ssh", login),
        Probe("scheduler", ping_scheduler),
        *(Probe("filesystem", stat(fs.path), path=fs.path) for fs in system.filesystems),
    ]


def _watcher_gauges(watchers: dict[str, JobWatcher]) -> Callable[[], Iterable[Metric]]:
    names = {
        "interval": ("hpcgate_watcher_interval_seconds", "Current interval between rounds"),
        "lag": ("hpcgate_watcher_lag_seconds", "How late the next round is (0 on time)"),
        "data_age": ("hpcgate_watcher_data_age_seconds", "Age of the oldest scope's data"),
        "views": ("hpcgate_watcher_jobs_tracked", "Jobs (and arrays) the watcher tracks"),
        "watched": ("hpcgate_watcher_jobs_watched", "Job ids clients are waiting on"),
        "scopes": ("hpcgate_watcher_scopes", "Polling identities with interest"),
        "sse": ("hpcgate_sse_subscribers", "Open event streams"),
        "longpoll": ("hpcgate_longpoll_waiters", "Waiting long-polls"),
    }

    def collect() -> Iterable[Metric]:
        stats = {system: watcher.stats() for system, watcher in watchers.items()}
        for key, (name, documentation) in names.items():
            yield gauge(name, documentation, {s: row[key] for s, row in stats.items()})

    return collect


@dataclass
class Services:
    """Token validation, the SSH pool, one scheduler and job watcher per system, health
    checks, keyed submissions and metrics."""

    settings: Settings
    tokens: TokenValidator
    pool: SshPool
    schedulers: dict[str, Scheduler]
    health: HealthChecker
    scheduler_versions: dict[str, str] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    watchers: dict[str, JobWatcher] = field(default_factory=dict)
    submitter: IdempotentSubmitter | None = None

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
        )
        watchers = {
            system.name: JobWatcher(
                system,
                schedulers[system.name],
                functools.partial(pool.runner, system.name),
                metrics=metrics,
            )
            for system in settings.systems
            if system.watcher.enabled
        }
        submitter = IdempotentSubmitter(_idempotency_store(settings), settings.idempotency, metrics)
        metrics.add_gauges(pool_gauges(pool.stats))
        metrics.add_gauges(_watcher_gauges(watchers))
        return cls(
            settings,
            TokenValidator(settings.auth),
            pool,
            schedulers,
            health,
            versions,
            metrics,
            watchers,
            submitter,
        )

    async def start(self) -> None:
        await self.tokens.start()
        await self.pool.start()
        if self.submitter is not None:
            await self.submitter.start()
        await self.health.check_now()
        self.health.start()
        for watcher in self.watchers.values():
            watcher.start()

    async def close(self) -> None:
        for watcher in self.watchers.values():
            await watcher.close()
        await self.health.stop()
        if self.submitter is not None:
            await self.submitter.close()
        await self.pool.close()
        await self.tokens.aclose()


def _idempotency_store(settings: Settings) -> IdempotencyStore:
    """The configured store: SQLite under ``state_dir`` or a shared Redis."""
    idempotency = settings.idempotency
    if idempotency.backend == "redis":
        assert idempotency.redis_url is not None  # the configuration checks it
        try:
            from hpcgate.idempotency_redis import RedisIdempotencyStore
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
