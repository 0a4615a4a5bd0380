"""The local site as tests see it: bring it up once, read its `env`."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import asyncssh

REPO = Path(__file__).resolve().parents[1]
SITE_COMMAND = REPO / "deploy" / "local" / "site"


@dataclass(frozen=True)
class SiteEnv:
    """The `KEY=value` lines of `deploy/local/site env`, with typed accessors."""

    values: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    @property
    def ssh_host(self) -> str:
        return self["HPC_SITE_SSH_HOST"]

    @property
    def ssh_port(self) -> int:
        return int(self["HPC_SITE_SSH_PORT"])

    @property
    def known_hosts(self) -> Path:
        return Path(self["HPC_SITE_SSH_KNOWN_HOSTS"])

    @property
    def ca_key(self) -> Path:
        return Path(self["HPC_SITE_SSH_CA_KEY"])

    @cached_property
    def users(self) -> list[str]:
        return self["HPC_SITE_USERS"].split()

    def key(self, user: str) -> Path:
        return Path(self[f"HPC_SITE_KEY_{user}"])

    def home(self, user: str) -> str:
        return f"{self['HPC_SITE_HOME_ROOT']}/{user}"

    def scratch(self, user: str) -> str:
        return f"{self['HPC_SITE_SCRATCH_ROOT']}/{user}"

    @property
    def slurm_conf(self) -> str:
        return self["SLURM_CONF"]


def site(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SITE_COMMAND), *args], capture_output=True, text=True, check=check, timeout=600
    )


def ensure_site_up() -> SiteEnv:
    """Bring the site up unless it already runs; return its environment."""
    if site("status", check=False).returncode != 0:
        result = site("up", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"the local site did not come up:\n{result.stdout}\n{result.stderr}")
    lines = site("env").stdout.splitlines()
    return SiteEnv(dict(line.split("=", 1) for line in lines if "=" in line))


@contextlib.asynccontextmanager
async def scratch_dirs(
    site_env: SiteEnv, sftp_as: Any, users: Iterable[str], prefix: str
) -> AsyncIterator[dict[str, str]]:
    """A fresh directory per user under their scratch (made as the user), removed after."""
    tag = uuid.uuid4().hex[:8]
    paths = {user: f"{site_env.scratch(user)}/{prefix}-{tag}" for user in users}
    for user, path in paths.items():
        await (await sftp_as(user)).mkdir(path)
    try:
        yield paths
    finally:
        for user, path in paths.items():
            sftp = await sftp_as(user)
            with contextlib.suppress(asyncssh.SFTPError):
                await sftp.chmod(path, 0o700)
                await sftp.rmtree(path)
