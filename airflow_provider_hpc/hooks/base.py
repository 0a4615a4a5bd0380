"""``HpcBaseHook``: the connection, the two httpx clients and how a call is sent.

The endpoint methods live apart (:mod:`.sync_api`, :mod:`.async_api`); this module owns
what they share: the parsed connection, clients built with :class:`~.auth.HpcAuth` and the
retry transports of :mod:`.retry` (so sync calls, async calls and the job-event stream
authenticate and retry alike), and the reading of answers into models or typed errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from airflow.sdk import BaseHook
from pydantic import ValidationError

from airflow_provider_hpc import __version__
from airflow_provider_hpc.exceptions import HpcApiError, HpcConnectionError, HpcError
from airflow_provider_hpc.hooks import api
from airflow_provider_hpc.hooks.auth import HpcAuth, credentials_identity
from airflow_provider_hpc.hooks.config import HpcConnectionConfig, describe_transport_error
from airflow_provider_hpc.hooks.retry import (
    IDEMPOTENT,
    AsyncRetryTransport,
    RetryPolicy,
    RetryTransport,
)

T = TypeVar("T")


def _environment_proxies() -> dict[str, str | None]:
    """httpx's reading of HTTP(S)_PROXY / ALL_PROXY / NO_PROXY (mount pattern -> proxy).

    A client given its own transport ignores these; the hook gives one (to retry), so it
    mounts the proxies itself, each behind the same retry layer.
    """
    try:
        from httpx._utils import get_environment_proxies
    except ImportError:  # pragma: no cover - a future httpx
        return {}
    return get_environment_proxies()


class HpcBaseHook(BaseHook):
    """The connection, clients and sending shared by every endpoint method.

    :param hpc_conn_id: Airflow connection id.
    :param system: default system (cluster) name; else the connection's ``system``.
    :param retry: retry policy for 429/5xx/transport errors (never for other 4xx).
    :param transport: custom httpx transport (tests, proxies); used for sync and async,
        behind the retry layer.
    """

    default_conn_name = "hpc_default"

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

    async def aresolve_system(self, system: str | None = None) -> str:
        """:meth:`resolve_system` with the async connection lookup."""
        name = system or self.system or (await self.aget_config()).system
        if not name:
            raise HpcError("no system given (operator argument or connection extra 'system')")
        return name

    def get_job_url(self, job_id: str, *, system: str | None = None) -> str:
        """The job's API URL (what :class:`HpcJobLink` shows)."""
        sysname = quote(self.resolve_system(system), safe="")
        return f"{self.config.base_url}/compute/{sysname}/jobs/{quote(str(job_id), safe='')}"

    async def astream_key(self, system: str) -> tuple[str, str, str, str]:
        """(connection id, API URL, system, identity digest): whose requests may share one
        job-event stream (the identity is a digest of the credentials, never the secret)."""
        config = await self.aget_config()
        identity = credentials_identity(config.credentials)
        return (self.hpc_conn_id, config.base_url, system, identity)

    # ------------------------------------------------------------------ clients

    def _client_options(self, config: HpcConnectionConfig) -> dict[str, Any]:
        headers = {"User-Agent": f"airflow-provider-hpc/{__version__}"}
        timeout = httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0))
        return {
            "base_url": config.base_url,
            "timeout": timeout,
            "headers": headers,
            "auth": HpcAuth(config.credentials, timeout=timeout, headers=headers),
            "follow_redirects": False,
        }

    @staticmethod
    def _verify(config: HpcConnectionConfig) -> bool | ssl.SSLContext:
        if isinstance(config.verify, str):
            return ssl.create_default_context(cafile=config.verify)
        return config.verify

    def get_conn(self) -> httpx.Client:
        """The (cached) sync ``httpx.Client``: auth flow, retry transport."""
        if self._client is None:
            config = self.config
            options = self._client_options(config)
            if isinstance(self.transport, httpx.BaseTransport):
                options["transport"] = RetryTransport(self.transport, self.retry)
            else:
                verify = self._verify(config)

                def direct(proxy: str | None = None) -> RetryTransport:
                    return RetryTransport(
                        httpx.HTTPTransport(verify=verify, proxy=proxy), self.retry
                    )

                options["transport"] = direct()
                options["mounts"] = {
                    pattern: direct(proxy) if proxy else None
                    for pattern, proxy in _environment_proxies().items()
                }
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
            options["transport"] = AsyncRetryTransport(self.transport, self.retry)
        else:
            verify = self._verify(config)

            def direct(proxy: str | None = None) -> AsyncRetryTransport:
                inner = httpx.AsyncHTTPTransport(verify=verify, proxy=proxy)
                return AsyncRetryTransport(inner, self.retry)

            options["transport"] = direct()
            options["mounts"] = {
                pattern: direct(proxy) if proxy else None
                for pattern, proxy in _environment_proxies().items()
            }
        return httpx.AsyncClient(**options)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    # ------------------------------------------------------------------ sending

    @staticmethod
    def _request_args(call: api.ApiCall[Any]) -> dict[str, Any]:
        args: dict[str, Any] = {
            "params": call.params,
            "headers": dict(call.headers),
            "extensions": {IDEMPOTENT: call.idempotent},
        }
        if call.json is not None:
            args["json"] = call.json
        return args

    def _send(
        self,
        call: api.ApiCall[Any],
        *,
        stream: bool = False,
        files: Callable[[], Mapping[str, Any]] | None = None,
    ) -> httpx.Response:
        """Send ``call`` (auth and retries by the client); raise :class:`HpcApiError` on an
        error answer, :class:`HpcConnectionError` when the API cannot be reached."""
        client = self.get_conn()
        args = self._request_args(call)
        if files is not None:
            args["files"] = files()
        request = client.build_request(call.method, call.path, **args)
        try:
            response = client.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise HpcConnectionError(self._unreachable(call.method, request.url, exc)) from exc
        if not response.is_success:
            try:
                response.read()
                api.raise_for_error(response)
            finally:
                response.close()
        return response

    async def _asend(self, call: api.ApiCall[Any]) -> httpx.Response:
        """Async twin of :meth:`_send` (no streaming, no uploads: triggers do not need them)."""
        client = await self.aget_conn()
        request = client.build_request(call.method, call.path, **self._request_args(call))
        try:
            response = await client.send(request)
        except httpx.TransportError as exc:
            raise HpcConnectionError(self._unreachable(call.method, request.url, exc)) from exc
        api.raise_for_error(response)
        return response

    def _unreachable(self, method: str, url: httpx.URL, exc: Exception) -> str:
        guessed = self._config is not None and self._config.scheme_guessed
        return describe_transport_error(method, url, exc, scheme_guessed=guessed)

    def _run(self, call: api.ApiCall[T]) -> T:
        return _parse(call, self._send(call))

    async def _arun(self, call: api.ApiCall[T]) -> T:
        return _parse(call, await self._asend(call))

    @contextlib.asynccontextmanager
    async def astream(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A streamed GET of ``path`` (Server-Sent Events) with the client's auth and retry
        layer; no read timeout (the caller judges liveness). Any status is yielded."""
        client = await self.aget_conn()
        config = await self.aget_config()
        request = client.build_request(
            "GET",
            path,
            headers=dict(headers or {}),
            timeout=httpx.Timeout(config.timeout, read=None),
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise HpcConnectionError(self._unreachable("GET", request.url, exc)) from exc
        try:
            yield response
        finally:
            await response.aclose()


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
