"""Fixtures for the transfer tests: a server for the local site with a known signing key.

The server runs with uvicorn in a thread of its own (its own event loop), like the
filesystem tests' server, so sync clients (pyfirecrest) and async ones both work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from hpcgate.api.app import create_app
from hpcgate.auth.localauth import LocalIssuer, create_signing_key
from hpcgate.cli import local_site_config
from hpcgate.compute.jobs import TERMINAL_STATES
from hpcgate.config import Settings
from hpcgate.transfer.service import TransferService
from tests.server import serve_in_thread
from tests.site import SiteEnv, scratch_dirs

USERS = ("hpcuser1", "hpcuser2")
SIGNING_KEY = "test-signing-key-" + "k" * 32
PART_SIZE = 8 * 1024 * 1024


@dataclass
class TransferServer:
    """The running server, as the tests see it."""

    url: str
    system: str
    issuer: LocalIssuer
    settings: Settings
    app: Any
    _tokens: dict[str, str] = field(default_factory=dict)

    def token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = self.issuer.mint(user)
        return self._tokens[user]

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(user), timeout=60)

    def async_client(self, user: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers(user), timeout=60)

    @property
    def transfers(self) -> TransferService:
        transfers = self.app.state.services.transfers
        assert transfers is not None
        return transfers

    def path(self, kind: str) -> str:
        return f"/filesystem/{self.system}/{kind}"


@contextlib.contextmanager
def transfer_server(
    site_env: SiteEnv,
    key_dir: Path,
    *,
    transfer: dict[str, Any] | None = None,
    **system_overrides: Any,
) -> Iterator[TransferServer]:
    """A server for the local site in a thread, with ``transfer`` settings."""
    config = local_site_config(site_env.values, key_dir)
    config.setdefault("state_dir", str(key_dir / "state"))
    config["health"] = {"interval_seconds": 3600}
    config["transfer"] = {
        "signing_key": SIGNING_KEY,
        "part_size": PART_SIZE,
        "job_poll_seconds": 0.2,
        **(transfer or {}),
    }
    config["systems"][0].update(system_overrides)  # type: ignore[index]
    settings = Settings(**config)  # type: ignore[arg-type]
    app = create_app(settings)
    with serve_in_thread(app, "transfer-api-server") as url:
        yield TransferServer(
            url=url,
            system=settings.systems[0].name,
            issuer=create_signing_key(key_dir),
            settings=settings,
            app=app,
        )


@pytest.fixture(scope="session")
def xfer(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransferServer]:
    """The transfer-test server (8 MiB parts, a known signing key)."""
    with transfer_server(site_env, tmp_path_factory.mktemp("transfer-keys")) as server:
        yield server


@pytest.fixture
async def space(site_env: SiteEnv, sftp_as: Any) -> AsyncIterator[dict[str, str]]:
    """A fresh directory per user in their scratch, removed afterwards."""
    async with scratch_dirs(site_env, sftp_as, USERS, "xfer") as paths:
        yield paths


async def wait_for_job(
    client: httpx.AsyncClient, system: str, job_id: str, *, timeout: float = 60
) -> dict[str, Any]:
    """Poll the job until it ended; its last description."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/compute/{system}/jobs/{job_id}")
        if response.status_code == 200:
            job = response.json()["jobs"][0]
            if job["status"]["state"] in TERMINAL_STATES:
                return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not end within {timeout} s")
        await asyncio.sleep(0.2)


async def read_text(sftp: asyncssh.SFTPClient, path: str) -> str:
    async with sftp.open(path, "r") as handle:
        return await handle.read()
