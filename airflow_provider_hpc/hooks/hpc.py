"""``HpcHook``: typed access to a FirecREST v2 compatible API, sync (workers) and async."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx
from airflow.sdk import BaseHook
from pydantic import ValidationError

from airflow_provider_hpc import __version__
from airflow_provider_hpc.exceptions import (
    HpcApiError,
    HpcAuthError,
    HpcConnectionError,
    HpcError,
    HpcJobError,
    HpcNotFoundError,
)
from airflow_provider_hpc.hooks import api
from airflow_provider_hpc.hooks.auth import (
    TOKEN_CACHE,
    CachedToken,
    ClientCredentials,
    Credentials,
    StaticToken,
    parse_token_response,
)
from airflow_provider_hpc.hooks.models import (
    FileChecksum,
    FileContent,
    FileEntry,
    FileStat,
    Job,
    JobMetadata,
    JobSpec,
    JobSummary,
    System,
    TransferJob,
)

T = TypeVar("T")

# Indirections so that tests can skip the waiting.
_sleep = time.sleep
_asleep = asyncio.sleep

_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter on 429/5xx/transport errors; ``Retry-After`` wins."""

    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Equal jitter: half of the exponential step, plus up to the other half at random."""
        step = min(self.backoff_max, self.backoff_base * (2**attempt))
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not crypto

    def wait(self, attempt: int, headers: Mapping[str, str]) -> float:
        hinted = retry_after_seconds(headers)
        if hinted is not None:
            return min(hinted, self.retry_after_max)
        return self.backoff(attempt)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds from ``Retry-After`` (delta or HTTP date) or ``RateLimit-Reset``; None if absent."""
    for name in ("retry-after", "ratelimit-reset"):
        value = headers.get(name)
        if not value:
            continue
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            continue
        return max(0.0, when - (time.time() if now is None else now))
    return None


@dataclass(frozen=True)
class HpcConnectionConfig:
    """What an ``hpc`` connection says, parsed once (no secrets in ``repr``)."""

    base_url: str
    credentials: Credentials | None = field(repr=False)
    system: str | None = None
    verify: bool | str = True
    timeout: float = 30.0

    @classmethod
    def from_connection(cls, conn: Any, extra: Mapping[str, Any]) -> HpcConnectionConfig:
        # Values from older forms may carry the ``extra__hpc__`` prefix.
        extra = {str(k).removeprefix("extra__hpc__"): v for k, v in extra.items()}
        host = (conn.host or extra.get("api_url") or "").strip()
        if not host:
            raise HpcError(f"connection {conn.conn_id!r}: set the API URL in host")
        if "://" not in host:
            scheme = conn.schema or "https"
            host = f"{scheme}://{host}{f':{conn.port}' if conn.port else ''}"
        method = str(extra.get("auth_method") or "").lower()
        if not method:
            method = "oauth2" if extra.get("client_id") or extra.get("token_url") else "token"
        credentials: Credentials | None
        if method == "oauth2":
            token_url = extra.get("token_url")
            client_id = extra.get("client_id") or conn.login
            secret = extra.get("client_secret") or conn.password
            if not (token_url and client_id and secret):
                raise HpcError(
                    f"connection {conn.conn_id!r}: OAuth2 needs token_url, client_id, client_secret"
                )
            credentials = ClientCredentials(
                str(token_url),
                str(client_id),
                str(secret),
                scope=extra.get("scope") or None,
                audience=extra.get("audience") or None,
            )
        elif method in ("token", "static", "static_token"):
            token = conn.password or extra.get("token")
            credentials = StaticToken(str(token)) if token else None
        else:
            raise HpcError(f"connection {conn.conn_id!r}: unknown auth_method {method!r}")
        verify: bool | str = _as_bool(extra.get("verify_tls", True))
        if verify and extra.get("ca_bundle"):
            verify = str(extra["ca_bundle"])
        return cls(
            base_url=host.rstrip("/"),
            credentials=credentials,
            system=extra.get("system") or None,
            verify=verify,
            timeout=float(extra.get("timeout") or 30.0),
        )


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(value)


class HpcHook(BaseHook):
    """Talk to a FirecREST v2 compatible API (``hpcgate``) for one connection.

    Connection: host = API URL (``https://api.example.org[/prefix]``); extra ``system``
    (default system), ``auth_method`` (``token`` | ``oauth2``), static token in password,
    or ``token_url`` / ``client_id`` / ``client_secret`` / ``scope`` / ``audience`` for
    OAuth2 client credentials; ``verify_tls``, ``ca_bundle``, ``timeout``.

    Sync methods run in workers; ``a``-prefixed methods are for triggers (async connection
    lookup, ``httpx.AsyncClient``). Both build the same :mod:`.api` calls and models.

    :param hpc_conn_id: Airflow connection id.
    :param system: default system (cluster) name; else the connection's ``system``.
    :param retry: retry policy for 429/5xx/transport errors (never for other 4xx).
    :param transport: custom httpx transport (tests, proxies); used for sync and async.
    """

    conn_name_attr = "hpc_conn_id"
    default_conn_name = "hpc_default"
    conn_type = "hpc"
    hook_name = "HPC (FirecREST v2)"

    transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None

    def __init__(
        self,
        hpc_conn_id: str = default_conn_name,
        *,
        system: str | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__()
        self.hpc_conn_id = hpc_conn_id
        self.system = system
        self.retry = retry or RetryPolicy()
        if transport is not None:
            self.transport = transport
        self._config: HpcConnectionConfig | None = None
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ configuration

    @property
    def config(self) -> HpcConnectionConfig:
        """The parsed connection (sync lookup; use :meth:`aget_config` in triggers)."""
        if self._config is None:
            conn = self.get_connection(self.hpc_conn_id)
            self._config = HpcConnectionConfig.from_connection(conn, conn.extra_dejson)
        return self._config

    async def aget_config(self) -> HpcConnectionConfig:
        """The parsed connection via Airflow's async connection API."""
        if self._config is None:
            conn = await self.aget_connection(self.hpc_conn_id)
            extra = await conn.aextra_dejson()
            self._config = HpcConnectionConfig.from_connection(conn, extra)
        return self._config

    def resolve_system(self, system: str | None = None) -> str:
        """``system`` argument, else the hook's, else the connection's."""
        name = system or self.system or self.config.system
        if not name:
            raise HpcError("no system given (operator argument or connection extra 'system')")
        return name

    async def _aresolve_system(self, system: str | None) -> str:
        name = system or self.system or (await self.aget_config()).system
        if not name:
            raise HpcError("no system given (operator argument or connection extra 'system')")
        return name

    def get_job_url(self, job_id: str, *, system: str | None = None) -> str:
        """The job's API URL (what :class:`HpcJobLink` shows)."""
        sysname = quote(self.resolve_system(system), safe="")
        return f"{self.config.base_url}/compute/{sysname}/jobs/{quote(str(job_id), safe='')}"

    # ------------------------------------------------------------------ clients

    def _client_options(self, config: HpcConnectionConfig) -> dict[str, Any]:
        verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=config.verify)
            if isinstance(config.verify, str)
            else config.verify
        )
        return {
            "base_url": config.base_url,
            "timeout": httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0)),
            "verify": verify,
            "headers": {"User-Agent": f"airflow-provider-hpc/{__version__}"},
            "follow_redirects": False,
        }

    def get_conn(self) -> httpx.Client:
        """The (cached) sync ``httpx.Client``."""
        if self._client is None:
            options = self._client_options(self.config)
            if isinstance(self.transport, httpx.BaseTransport):
                options["transport"] = self.transport
            self._client = httpx.Client(**options)
        return self._client

    async def aget_conn(self) -> httpx.AsyncClient:
        """The (cached) ``httpx.AsyncClient``; built off the event loop (it reads CA files)."""
        if self._aclient is None:
            config = await self.aget_config()
            self._aclient = await asyncio.to_thread(self._new_async_client, config)
        return self._aclient

    def _new_async_client(self, config: HpcConnectionConfig) -> httpx.AsyncClient:
        options = self._client_options(config)
        if isinstance(self.transport, httpx.AsyncBaseTransport):
            options["transport"] = self.transport
        return httpx.AsyncClient(**options)

    def fresh(self) -> HpcHook:
        """A hook with this one's settings and parsed connection but its own clients
        (for ``on_kill``, which may interrupt a request of this hook's client)."""
        other = HpcHook(self.hpc_conn_id, system=self.system, retry=self.retry)
        other.transport = self.transport
        other._config = self._config
        return other

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    # ------------------------------------------------------------------ auth

    def _bearer(self) -> dict[str, str]:
        creds = self.config.credentials
        if creds is None:
            return {}
        if isinstance(creds, StaticToken):
            return {"Authorization": f"Bearer {creds.token}"}
        token = TOKEN_CACHE.get(creds.cache_key)
        if token is None:
            with TOKEN_CACHE.thread_lock(creds.cache_key):
                token = TOKEN_CACHE.get(creds.cache_key) or self._fetch_token(creds)
        return {"Authorization": f"Bearer {token.access_token}"}

    async def _abearer(self) -> dict[str, str]:
        creds = (await self.aget_config()).credentials
        if creds is None:
            return {}
        if isinstance(creds, StaticToken):
            return {"Authorization": f"Bearer {creds.token}"}
        token = TOKEN_CACHE.get(creds.cache_key)
        if token is None:
            async with TOKEN_CACHE.async_lock(creds.cache_key):
                token = TOKEN_CACHE.get(creds.cache_key) or await self._afetch_token(creds)
        return {"Authorization": f"Bearer {token.access_token}"}

    def _token_call(self, creds: ClientCredentials) -> api.ApiCall[CachedToken]:
        # Absolute URL: httpx ignores base_url for it. Repeating a token request is harmless.
        return api.ApiCall("POST", creds.token_url, parse_token_response)

    def _fetch_token(self, creds: ClientCredentials) -> CachedToken:
        from airflow.sdk.log import mask_secret

        call = self._token_call(creds)
        response = self._send(call, data=creds.form(), authenticate=False, check=False)
        token = parse_token_response(response)
        mask_secret(token.access_token)
        TOKEN_CACHE.put(creds.cache_key, token)
        self.log.info(
            "Obtained an access token from %s (valid %.0f s)",
            creds.token_url,
            token.expires_at - time.time(),
        )
        return token

    async def _afetch_token(self, creds: ClientCredentials) -> CachedToken:
        from airflow.sdk.log import amask_secret

        call = self._token_call(creds)
        response = await self._asend(call, data=creds.form(), authenticate=False, check=False)
        token = parse_token_response(response)
        await amask_secret(token.access_token)
        TOKEN_CACHE.put(creds.cache_key, token)
        return token

    def _drop_token(self, request: httpx.Request) -> bool:
        """After a 401: forget an OAuth2 token so the next attempt fetches a new one."""
        creds = self._config.credentials if self._config else None
        if not isinstance(creds, ClientCredentials):
            return False
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        TOKEN_CACHE.invalidate(creds.cache_key, sent or None)
        return True

    # ------------------------------------------------------------------ transport + retries

    def _retry_delay(
        self,
        call: api.ApiCall[Any],
        attempt: int,
        *,
        response: httpx.Response | None = None,
        error: Exception | None = None,
    ) -> float | None:
        """Seconds to wait before trying ``call`` again, or None to give up."""
        if attempt >= self.retry.max_retries:
            return None
        if error is not None:
            if call.idempotent or isinstance(error, _NEVER_SENT):
                return self.retry.backoff(attempt)
            return None
        assert response is not None
        status = response.status_code
        if call.idempotent:
            retryable = status == 429 or (status >= 500 and status != 501)
        else:
            retryable = status in (429, 503)
        return self.retry.wait(attempt, response.headers) if retryable else None

    def _request_args(
        self,
        call: api.ApiCall[Any],
        auth: Mapping[str, str],
        files: Mapping[str, Any] | None,
        data: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {
            "params": call.params,
            "headers": {**call.headers, **auth},
        }
        if call.json is not None:
            args["json"] = call.json
        if files is not None:
            args["files"] = files
        if data is not None:
            args["data"] = data
        return args

    def _send(
        self,
        call: api.ApiCall[Any],
        *,
        stream: bool = False,
        files: Callable[[], Mapping[str, Any]] | None = None,
        data: Mapping[str, Any] | None = None,
        authenticate: bool = True,
        check: bool = True,
    ) -> httpx.Response:
        """Send ``call`` with auth and retries; raise :class:`HpcApiError` on an error answer."""
        client = self.get_conn()
        attempt, reauthenticated = 0, False
        while True:
            auth = self._bearer() if authenticate else {}
            request = client.build_request(
                call.method,
                call.path,
                **self._request_args(call, auth, files() if files else None, data),
            )
            try:
                response = client.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = self._retry_delay(call, attempt, error=exc)
                if delay is None:
                    raise HpcConnectionError(f"{call.method} {request.url.path}: {exc!r}") from exc
                self.log.warning(
                    "%s %s failed (%r); retry in %.1f s", call.method, request.url.path, exc, delay
                )
                _sleep(delay)
                attempt += 1
                continue
            if response.status_code == 401 and authenticate and not reauthenticated:
                if self._drop_token(request):
                    response.close()
                    reauthenticated = True
                    continue
            delay = self._retry_delay(call, attempt, response=response)
            if delay is not None:
                response.close()
                self.log.warning(
                    "%s %s -> %s; retry in %.1f s",
                    call.method,
                    request.url.path,
                    response.status_code,
                    delay,
                )
                _sleep(delay)
                attempt += 1
                continue
            if check and not response.is_success:
                try:
                    response.read()
                    api.raise_for_error(response)
                finally:
                    response.close()
            return response

    async def _asend(
        self,
        call: api.ApiCall[Any],
        *,
        data: Mapping[str, Any] | None = None,
        authenticate: bool = True,
        check: bool = True,
    ) -> httpx.Response:
        """Async twin of :meth:`_send` (no streaming, no uploads: triggers do not need them)."""
        client = await self.aget_conn()
        attempt, reauthenticated = 0, False
        while True:
            auth = await self._abearer() if authenticate else {}
            request = client.build_request(
                call.method, call.path, **self._request_args(call, auth, None, data)
            )
            try:
                response = await client.send(request)
            except httpx.TransportError as exc:
                delay = self._retry_delay(call, attempt, error=exc)
                if delay is None:
                    raise HpcConnectionError(f"{call.method} {request.url.path}: {exc!r}") from exc
                await _asleep(delay)
                attempt += 1
                continue
            if response.status_code == 401 and authenticate and not reauthenticated:
                if self._drop_token(request):
                    reauthenticated = True
                    continue
            delay = self._retry_delay(call, attempt, response=response)
            if delay is not None:
                await _asleep(delay)
                attempt += 1
                continue
            if check:
                api.raise_for_error(response)
            return response

    def _run(self, call: api.ApiCall[T]) -> T:
        return _parse(call, self._send(call))

    async def _arun(self, call: api.ApiCall[T]) -> T:
        return _parse(call, await self._asend(call))

    # ------------------------------------------------------------------ status

    def test_connection(self) -> tuple[bool, str]:
        """Authenticate and list systems; check the configured system exists."""
        try:
            names = [system.name for system in self.list_systems()]
        except (HpcError, httpx.HTTPError, ValueError) as exc:
            return False, str(exc)
        wanted = self.system or self.config.system
        if wanted and wanted.lower() not in (name.lower() for name in names):
            return False, f"connected, but system {wanted!r} is not among {names}"
        return True, f"connected; systems: {', '.join(names) or '(none)'}"

    def list_systems(self) -> list[System]:
        return self._run(api.systems())

    # ------------------------------------------------------------------ jobs (sync)

    def submit_job(
        self, job: JobSpec, *, system: str | None = None, idempotency_key: str | None = None
    ) -> str:
        """Submit; return the job id. Retried only where the server cannot have acted."""
        return self._run(api.submit_job(self.resolve_system(system), job, idempotency_key))

    def get_job(self, job_id: str, *, system: str | None = None) -> list[Job]:
        """The job's records (several for an array job)."""
        return self._run(api.get_job(self.resolve_system(system), job_id))

    def get_job_status(self, job_id: str, *, system: str | None = None) -> JobSummary:
        return JobSummary.from_jobs(str(job_id), self.get_job(job_id, system=system))

    def list_jobs(
        self,
        *,
        system: str | None = None,
        name: str | None = None,
        allusers: bool = False,
        time_window: str | None = None,
    ) -> list[Job]:
        """The caller's active jobs and those ended within ``time_window`` (server default
        24h); with ``name``, only those with exactly that name. Newest first."""
        call = api.list_jobs(
            self.resolve_system(system), name=name, allusers=allusers, time_window=time_window
        )
        return _newest_named(self._run(call), name)

    def cancel_job(self, job_id: str, *, system: str | None = None) -> None:
        self._run(api.cancel_job(self.resolve_system(system), job_id))

    def get_job_metadata(self, job_id: str, *, system: str | None = None) -> list[JobMetadata]:
        return self._run(api.job_metadata(self.resolve_system(system), job_id))

    def wait_for_job(
        self,
        job_id: str,
        *,
        system: str | None = None,
        poll_interval: float = 30.0,
        timeout: float | None = None,
        on_poll: Callable[[JobSummary], None] | None = None,
        error_window: float = 600.0,
        not_found_grace: float = 120.0,
    ) -> JobSummary:
        """Poll until the job is terminal (in the worker). Transient errors are tolerated for
        ``error_window`` seconds in a row, 404 for ``not_found_grace`` seconds from the start.

        :raises HpcJobError: on timeout (the job is left alone; the caller decides).
        """
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        budget = ErrorBudget(window=error_window, not_found_until=start + not_found_grace)
        while True:
            try:
                summary = self.get_job_status(job_id, system=system)
                budget.reset()
            except HpcError as exc:
                if not budget.allows(exc, time.monotonic()):
                    raise
                self.log.warning("Status of job %s unavailable (%s); still waiting", job_id, exc)
                summary = None
            if summary is not None:
                if on_poll is not None:
                    on_poll(summary)
                if summary.terminal:
                    return summary
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise HpcJobError(
                    f"job {job_id} did not finish within {timeout:.0f} s",
                    job_id=str(job_id),
                    state=summary.state if summary else None,
                )
            _sleep(min(poll_interval, deadline - now) if deadline is not None else poll_interval)

    # ------------------------------------------------------------------ jobs (async)

    async def asubmit_job(
        self, job: JobSpec, *, system: str | None = None, idempotency_key: str | None = None
    ) -> str:
        return await self._arun(
            api.submit_job(await self._aresolve_system(system), job, idempotency_key)
        )

    async def aget_job(self, job_id: str, *, system: str | None = None) -> list[Job]:
        return await self._arun(api.get_job(await self._aresolve_system(system), job_id))

    async def aget_job_status(self, job_id: str, *, system: str | None = None) -> JobSummary:
        return JobSummary.from_jobs(str(job_id), await self.aget_job(job_id, system=system))

    async def alist_jobs(
        self,
        *,
        system: str | None = None,
        name: str | None = None,
        allusers: bool = False,
        time_window: str | None = None,
    ) -> list[Job]:
        sysname = await self._aresolve_system(system)
        call = api.list_jobs(sysname, name=name, allusers=allusers, time_window=time_window)
        return _newest_named(await self._arun(call), name)

    async def acancel_job(self, job_id: str, *, system: str | None = None) -> None:
        await self._arun(api.cancel_job(await self._aresolve_system(system), job_id))

    async def aget_job_metadata(
        self, job_id: str, *, system: str | None = None
    ) -> list[JobMetadata]:
        return await self._arun(api.job_metadata(await self._aresolve_system(system), job_id))

    # ------------------------------------------------------------------ files (sync)

    def tail(
        self,
        path: str,
        *,
        system: str | None = None,
        lines: int | None = 50,
        nbytes: int | None = None,
    ) -> FileContent:
        return self._run(api.tail(self.resolve_system(system), path, lines=lines, nbytes=nbytes))

    def view(
        self, path: str, *, system: str | None = None, offset: int = 0, size: int = 65536
    ) -> str:
        return self._run(api.view(self.resolve_system(system), path, offset=offset, size=size))

    def stat(self, path: str, *, system: str | None = None, dereference: bool = False) -> FileStat:
        return self._run(api.stat(self.resolve_system(system), path, dereference=dereference))

    def exists(self, path: str, *, system: str | None = None) -> bool:
        try:
            self.stat(path, system=system, dereference=True)
        except HpcNotFoundError:
            return False
        return True

    def checksum(self, path: str, *, system: str | None = None) -> FileChecksum:
        return self._run(api.checksum(self.resolve_system(system), path))

    def ls(
        self, path: str, *, system: str | None = None, show_hidden: bool = False
    ) -> list[FileEntry]:
        return self._run(api.ls(self.resolve_system(system), path, show_hidden=show_hidden))

    def mkdir(self, path: str, *, system: str | None = None, parents: bool = True) -> None:
        self._run(api.mkdir(self.resolve_system(system), path, parents=parents))

    def rm(self, path: str, *, system: str | None = None, missing_ok: bool = False) -> None:
        try:
            self._run(api.rm(self.resolve_system(system), path))
        except HpcNotFoundError:
            if not missing_ok:
                raise

    def symlink(self, target: str, link_path: str, *, system: str | None = None) -> None:
        self._run(api.symlink(self.resolve_system(system), target, link_path))

    def move(self, source: str, target: str, *, system: str | None = None) -> TransferJob:
        """Start a server-side move; returns the data-movement job to wait for."""
        return self._run(api.transfer(self.resolve_system(system), "mv", source, target))

    def copy(self, source: str, target: str, *, system: str | None = None) -> TransferJob:
        """Start a server-side copy; returns the data-movement job to wait for."""
        return self._run(api.transfer(self.resolve_system(system), "cp", source, target))

    def upload(self, remote_path: str, source: IO[bytes], *, system: str | None = None) -> None:
        """Stream ``source`` to ``remote_path`` (``ops/upload``: dir + multipart filename).

        ``source`` must be seekable: it is rewound before each attempt.
        """
        directory, _, filename = remote_path.rstrip("/").rpartition("/")
        if not filename:
            raise ValueError(f"remote_path {remote_path!r} names no file")
        start = source.tell()

        def files() -> dict[str, Any]:
            source.seek(start)
            return {"file": (filename, source, "application/octet-stream")}

        self._send(api.upload(self.resolve_system(system), directory or "/"), files=files).close()

    def download(
        self,
        remote_path: str,
        sink: IO[bytes],
        *,
        system: str | None = None,
        hasher: Any = None,
        chunk_size: int = 1 << 20,
    ) -> int:
        """Stream ``remote_path`` into ``sink`` (updating ``hasher``); return the byte count."""
        response = self._send(api.download(self.resolve_system(system), remote_path), stream=True)
        size = 0
        try:
            for chunk in response.iter_bytes(chunk_size):
                sink.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                size += len(chunk)
        finally:
            response.close()
        return size

    # ------------------------------------------------------------------ files (async)

    async def astat(
        self, path: str, *, system: str | None = None, dereference: bool = False
    ) -> FileStat:
        return await self._arun(
            api.stat(await self._aresolve_system(system), path, dereference=dereference)
        )

    async def aexists(self, path: str, *, system: str | None = None) -> bool:
        try:
            await self.astat(path, system=system, dereference=True)
        except HpcNotFoundError:
            return False
        return True

    async def atail(
        self,
        path: str,
        *,
        system: str | None = None,
        lines: int | None = 50,
        nbytes: int | None = None,
    ) -> FileContent:
        sysname = await self._aresolve_system(system)
        return await self._arun(api.tail(sysname, path, lines=lines, nbytes=nbytes))


def _parse(call: api.ApiCall[T], response: httpx.Response) -> T:
    """Read a successful answer; a malformed one is an error, not a crash."""
    try:
        return call.parse(response)
    except (ValueError, ValidationError) as exc:
        raise HpcApiError(
            response.status_code,
            f"unexpected answer: {exc}".splitlines()[0][:300],
            method=call.method,
            url=str(response.request.url.copy_with(query=None)),
        ) from exc


def _newest_named(jobs: list[Job], name: str | None) -> list[Job]:
    if name is not None:
        jobs = [job for job in jobs if job.name == name]
    return sorted(jobs, key=lambda job: job.numeric_id, reverse=True)


@dataclass
class ErrorBudget:
    """How long a waiter tolerates errors: transient ones for ``window`` seconds in a row,
    404 until ``not_found_until`` (a job the scheduler has not listed yet)."""

    window: float = 600.0
    not_found_until: float = 0.0
    _first_error: float | None = None

    def allows(self, exc: BaseException, now: float) -> bool:
        if isinstance(exc, HpcNotFoundError):
            transient = now < self.not_found_until
        elif isinstance(exc, HpcApiError):
            transient = exc.transient
        else:
            transient = isinstance(exc, HpcConnectionError)
        if not transient:
            return False
        if self._first_error is None:
            self._first_error = now
        return now - self._first_error < self.window

    def reset(self) -> None:
        self._first_error = None


def file_digest(source: IO[bytes], algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of the rest of ``source`` (streamed); the position is restored."""
    start = source.tell()
    digest = hashlib.new(algorithm)
    while chunk := source.read(chunk_size):
        digest.update(chunk)
    source.seek(start)
    return digest.hexdigest()


__all__ = [
    "ErrorBudget",
    "HpcAuthError",
    "HpcConnectionConfig",
    "HpcHook",
    "RetryPolicy",
    "file_digest",
    "retry_after_seconds",
]


class UsesHpcHook:
    """For operators and sensors: ``hook``, built once from ``hpc_conn_id`` and ``system``."""

    hpc_conn_id: str
    system: str | None

    @cached_property
    def hook(self) -> HpcHook:
        return HpcHook(self.hpc_conn_id, system=self.system)
