"""The real hpcgate application, in process over a fake cluster, for the provider's tests.

``RealApi`` builds ``hpcgate.api.app.create_app`` with a real ``Services`` (token
validation with a local issuer, account policy, keyed submissions, health) whose
cluster-facing parts are ``tests.provider.cluster`` fakes, and serves it with uvicorn on
loopback. The provider's own clients (sync and async, retry transport, auth flow) reach
it through ``ApiTransport``: a thin recorder in front of real HTTP transports that can
also inject faults (429/5xx, transport errors, malformed answers, revoked tokens) and
stands in for the OAuth2 identity provider at ``TOKEN_URL`` (an IdP is not hpcgate).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx

from hpcgate.api.app import create_app
from hpcgate.auth.accounts import build_policy
from hpcgate.auth.localauth import LocalIssuer, create_signing_key
from hpcgate.auth.tokens import TokenValidator
from hpcgate.cluster.sshpool import SshPool
from hpcgate.compute.idempotency import IdempotentSubmitter, SqliteIdempotencyStore
from hpcgate.config import FilesystemLimits, Settings
from hpcgate.filesystem.base import Filesystem
from hpcgate.filesystem.sftp import SystemState
from hpcgate.operations.health import HealthChecker, Probe
from hpcgate.services import Services
from hpcgate.transfer.service import TransferService
from hpcgate.wire import ErrorBody
from tests.provider.cluster import USER, FakeCluster, FakeJob, FakeScheduler, MemoryFilesystem
from tests.server import serve_in_thread

SYSTEM = "hpcsite"
TOKEN_URL = "https://idp.test/token"
CLIENT_SECRET = "s3cret-value"


class FakeClusterServices(Services):
    """``Services`` whose filesystems are ``MemoryFilesystem`` over one ``FakeCluster``."""

    cluster: FakeCluster

    def filesystem(
        self, system: str, username: str, limits: FilesystemLimits | None = None
    ) -> Filesystem:
        state = self.filesystems[system]
        return MemoryFilesystem(
            self.cluster, state.policy, limits or state.system.filesystem_limits
        )


def build_settings(workdir: Path, issuer: LocalIssuer) -> Settings:
    return Settings.model_validate(
        {
            "auth": {
                "issuer": issuer.issuer,
                "audience": issuer.audience,
                "jwks_file": str(issuer.jwks_path),
            },
            "systems": [
                {
                    "name": SYSTEM,
                    "ssh": {"host": "login.invalid", "known_hosts": str(workdir / "known_hosts")},
                    "credentials": {"kind": "static_keys", "key_path": str(workdir / "{username}")},
                    "accounts": {"source": "none", "allow": [USER]},
                    "watcher": {"enabled": False},
                    "filesystems": [
                        {"path": "/scratch", "data_type": "scratch", "default_work_dir": True}
                    ],
                }
            ],
            "state_dir": str(workdir / "state"),
        }
    )


def build_services(settings: Settings, cluster: FakeCluster) -> FakeClusterServices:
    """The real services, with the fake cluster where SSH would be."""
    system = settings.systems[0]
    pool = SshPool(settings.systems)
    scheduler = FakeScheduler(cluster)

    async def healthy() -> None:
        return None

    probes = [
        Probe("ssh", healthy),
        Probe("scheduler", healthy),
        *(Probe("filesystem", healthy, path=fs.path) for fs in system.filesystems),
    ]
    health = HealthChecker(
        {system.name: probes},
        interval=settings.health.interval_seconds,
        timeout=settings.health.timeout_seconds,
    )
    services = FakeClusterServices(
        settings,
        TokenValidator(settings.auth),
        pool,
        {system.name: scheduler},
        health,
        submitter=IdempotentSubmitter(
            SqliteIdempotencyStore(settings.state_path() / "idempotency.sqlite3"),
            settings.idempotency,
        ),
        accounts={system.name: build_policy(system, functools.partial(pool.runner, system.name))},
        filesystems={system.name: SystemState(system)},
    )
    services.cluster = cluster
    services.transfers = TransferService(
        settings,
        filesystem=services.filesystem,
        runner=services.runner,
        schedulers=services.schedulers,
    )
    return services


Answer = httpx.Response | BaseException | Callable[[httpx.Request], httpx.Response | None]


class ApiTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Records every request; answers injected ones and the IdP; forwards the rest."""

    def __init__(self, issuer: LocalIssuer) -> None:
        self.issuer = issuer
        self.requests: list[httpx.Request] = []
        self.injected: list[tuple[str, re.Pattern[str], Answer]] = []
        self.issued: list[str] = []
        self.token_lifetime = 3600
        self.revoked: set[str] = set()
        self._sync = httpx.HTTPTransport()
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, httpx.AsyncHTTPTransport
        ] = weakref.WeakKeyDictionary()

    @property
    def tokens_issued(self) -> int:
        return len(self.issued)

    def inject(self, method: str, path_re: str, *answers: Answer) -> None:
        """Answer the next matching requests with ``answers`` (a Response, an exception
        to raise, or a callable(request) -> Response, or None to let the server answer)
        instead of the server."""
        pattern = re.compile(path_re)
        self.injected.extend((method, pattern, answer) for answer in answers)

    def calls(self, method: str, path_re: str = "") -> list[httpx.Request]:
        pattern = re.compile(path_re)
        return [r for r in self.requests if r.method == method and pattern.search(r.url.path)]

    def _answer(self, request: httpx.Request) -> httpx.Response | None:
        self.requests.append(request)
        if str(request.url) == TOKEN_URL:
            return self._token(request)
        for index, (method, pattern, answer) in enumerate(self.injected):
            if request.method == method and pattern.search(request.url.path):
                del self.injected[index]
                if isinstance(answer, BaseException):
                    raise answer
                if isinstance(answer, httpx.Response):
                    return answer
                called = answer(request)
                if called is not None:
                    return called
                break
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token in self.revoked:  # as the IdP revoking it: the server refuses it
            body = ErrorBody(error_type="error", message="invalid token")
            return httpx.Response(401, json=body.model_dump(mode="json"))
        return None

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        if form.get("client_secret") != CLIENT_SECRET:
            return httpx.Response(401, json={"error": "invalid_client"})
        token = self.issuer.mint(USER, lifetime_seconds=self.token_lifetime)
        self.issued.append(token)
        return httpx.Response(
            200,
            json={"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"},
        )

    def forward(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the server as is (for injected answers that let the
        server act, then lose its answer); the answer is read."""
        response = self._sync.handle_request(request)
        response.read()
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._answer(request)
        return answer if answer is not None else self._sync.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._answer(request)
        if answer is not None:
            return answer
        loop = asyncio.get_running_loop()
        transport = self._async.get(loop)
        if transport is None:
            transport = self._async[loop] = httpx.AsyncHTTPTransport()
        return await transport.handle_async_request(request)

    def close(self) -> None:
        self._sync.close()


class RealApi:
    """The served application, its fake cluster and the transport the hooks use."""

    def __init__(self, url: str, cluster: FakeCluster, transport: ApiTransport, token: str):
        self.url, self.cluster, self.transport, self.token = url, cluster, transport, token

    # the cluster
    @property
    def jobs(self) -> dict[str, FakeJob]:
        return self.cluster.jobs

    @property
    def files(self) -> dict[str, bytes]:
        return self.cluster.files

    def add_job(self, *args: Any, **kwargs: Any) -> FakeJob:
        return self.cluster.add_job(*args, **kwargs)

    # the wire
    @property
    def requests(self) -> list[httpx.Request]:
        return self.transport.requests

    def inject(self, method: str, path_re: str, *answers: Answer) -> None:
        self.transport.inject(method, path_re, *answers)

    def calls(self, method: str, path_re: str = "") -> list[httpx.Request]:
        return self.transport.calls(method, path_re)

    @property
    def submissions(self) -> list[httpx.Request]:
        return self.calls("POST", r"/compute/[^/]+/jobs$")

    @property
    def cancels(self) -> list[httpx.Request]:
        return self.calls("DELETE", r"/compute/[^/]+/jobs/")


@contextlib.contextmanager
def real_api(workdir: Path) -> Iterator[RealApi]:
    """Serve the application over a fresh fake cluster for the duration."""
    issuer = create_signing_key(workdir / "keys")
    settings = build_settings(workdir, issuer)
    cluster = FakeCluster()
    app = create_app(settings, services=build_services(settings, cluster))
    transport = ApiTransport(issuer)
    with serve_in_thread(app, "provider-api") as url:
        try:
            yield RealApi(url, cluster, transport, issuer.mint(USER, lifetime_seconds=3600))
        finally:
            transport.close()
