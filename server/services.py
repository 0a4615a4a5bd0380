"""The long-lived objects behind the routes, built once from the configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hpcgate.auth import TokenValidator
from hpcgate.config import Settings, SystemSettings
from hpcgate.errors import ClusterUnreachable
from hpcgate.health import HealthChecker, Probe
from hpcgate.scheduler.base import Scheduler
from hpcgate.scheduler.slurm import SlurmScheduler
from hpcgate.sshpool import SshPool


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
    user = system.health_check_user
    if user is None:
        return [Probe("ssh", lambda: _ssh_banner(ssh.host, ssh.port, ssh.connect_timeout))]
    runner = pool.runner(system.name, user)

    async def login() -> None:
        result = await runner.run(["true"])
        if not result.ok:
            raise ClusterUnreachable(f"login as {user} failed: {result.stderr.strip()}")

    async def ping_scheduler() -> None:
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


@dataclass
class Services:
    """Token validation, the SSH pool, one scheduler per system, health checks."""

    settings: Settings
    tokens: TokenValidator
    pool: SshPool
    schedulers: dict[str, Scheduler]
    health: HealthChecker
    scheduler_versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        pool = SshPool(settings.systems)
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
        return cls(settings, TokenValidator(settings.auth), pool, schedulers, health, versions)

    async def start(self) -> None:
        await self.tokens.start()
        await self.pool.start()
        await self.health.check_now()
        self.health.start()

    async def close(self) -> None:
        await self.health.stop()
        await self.pool.close()
        await self.tokens.aclose()
