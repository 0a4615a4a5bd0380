"""Fixtures for the filesystem API tests: the server in-process, clients per user.

The server runs with uvicorn in a thread of its own (its own event loop), so sync
clients such as pyfirecrest can call it from the tests. Its SSH pool is wrapped so
tests can assert that refused requests never reached the cluster.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpcgate.api.app import create_app
from hpcgate.auth.localauth import LocalIssuer, create_signing_key
from hpcgate.cli import local_site_config
from hpcgate.cluster.remote import CommandResult, CommandRunner
from hpcgate.config import Settings
from hpcgate.services import Services
from tests.server import serve_in_thread
from tests.site import SiteEnv, scratch_dirs

USERS = ("hpcuser1", "hpcuser2")


class _CountingRunner:
    def __init__(self, inner: CommandRunner, counts: Counter[str], user: str) -> None:
        self._inner, self._counts, self._user = inner, counts, user

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        self._counts[f"run:{self._user}"] += 1
        return await self._inner.run(argv, stdin=stdin, timeout=timeout)


@dataclass
class FsServer:
    """The running server, as the tests see it."""

    url: str
    system: str
    issuer: LocalIssuer
    settings: Settings
    remote_calls: Counter[str] = field(default_factory=Counter)
    _tokens: dict[str, str] = field(default_factory=dict)

    def token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = self.issuer.mint(user)
        return self._tokens[user]

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/filesystem/{self.system}/ops",
            headers={"Authorization": f"Bearer {self.token(user)}"},
            timeout=60,
        )

    def calls(self, user: str) -> int:
        """SFTP sessions opened and commands run for ``user`` so far."""
        return self.remote_calls[f"sftp:{user}"] + self.remote_calls[f"run:{user}"]


def _instrument(services: Services, counts: Counter[str]) -> None:
    pool = services.pool
    sftp, runner = pool.sftp, pool.runner

    def counting_sftp(system: str, username: str) -> AbstractAsyncContextManager[Any]:
        counts[f"sftp:{username}"] += 1
        return sftp(system, username)

    def counting_runner(system: str, username: str) -> CommandRunner:
        return _CountingRunner(runner(system, username), counts, username)

    pool.sftp = counting_sftp  # type: ignore[method-assign]
    pool.runner = counting_runner  # type: ignore[method-assign]


@contextlib.contextmanager
def running_server(site_env: SiteEnv, key_dir: Path, **overrides: Any) -> Iterator[FsServer]:
    """A server for the local site in a thread; ``overrides`` update the system's config."""
    config = local_site_config(site_env.values, key_dir)
    # no periodic probes while tests count remote calls (one check at start-up)
    config["health"] = {"interval_seconds": 3600}
    config["systems"][0].update(overrides)  # type: ignore[index]
    settings = Settings(**config)  # type: ignore[arg-type]
    services = Services.build(settings)
    counts: Counter[str] = Counter()
    _instrument(services, counts)
    app = create_app(settings, services=services)
    with serve_in_thread(app, "fs-api-server") as url:
        yield FsServer(
            url=url,
            system=settings.systems[0].name,
            issuer=create_signing_key(key_dir),
            settings=settings,
            remote_calls=counts,
        )


@pytest.fixture(scope="session")
def fs_server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsServer]:
    """The API server for the local site, default limits."""
    with running_server(site_env, tmp_path_factory.mktemp("fs-keys")) as server:
        yield server


@pytest.fixture(scope="session")
def api(fs_server: FsServer) -> Iterator[dict[str, httpx.Client]]:
    """An ops client per user: ``api["hpcuser1"].get("/ls", params=...)``."""
    clients = {user: fs_server.client(user) for user in USERS}
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture
async def workdir(site_env: SiteEnv, sftp_as: Any) -> AsyncIterator[dict[str, str]]:
    """A fresh directory per user under their scratch (made as the user), removed after."""
    async with scratch_dirs(site_env, sftp_as, USERS, "fs") as paths:
        yield paths
