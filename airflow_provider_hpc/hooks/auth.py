"""Credentials for the API and the ``httpx.Auth`` flow that applies them.

A static bearer token, or OAuth2 client credentials. :class:`HpcAuth` is the one place
that authenticates a request, for the sync client, the async client and the job-event
stream alike: it adds the bearer token, fetches an OAuth2 token when none is cached (as a
request of the same client, so through the same retry layer), and after a 401 replaces
the token once and resends.

Tokens are cached per process and per (token URL, client, scope, audience, secret digest),
so that many tasks or triggers in one process share one token, and are refreshed shortly
before they expire. Tokens and secrets never appear in ``repr`` or in logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

from airflow_provider_hpc.exceptions import HpcAuthError

log = logging.getLogger(__name__)

#: Refresh this long before expiry (capped at a tenth of the token's lifetime).
REFRESH_MARGIN_SECONDS = 60.0
#: Assumed lifetime when the token endpoint does not say.
DEFAULT_LIFETIME_SECONDS = 300.0


@dataclass(frozen=True)
class StaticToken:
    """A bearer token given in the connection."""

    token: str = field(repr=False)


@dataclass(frozen=True)
class ClientCredentials:
    """OAuth2 client-credentials grant against ``token_url``."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    audience: str | None = None

    @property
    def cache_key(self) -> str:
        parts = (self.token_url, self.client_id, self.client_secret, self.scope, self.audience)
        return hashlib.sha256("\0".join(p or "" for p in parts).encode()).hexdigest()

    def form(self) -> dict[str, str]:
        data = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        if self.scope:
            data["scope"] = self.scope
        if self.audience:
            data["audience"] = self.audience
        return data


Credentials = StaticToken | ClientCredentials


@dataclass(frozen=True)
class CachedToken:
    access_token: str = field(repr=False)
    expires_at: float
    refresh_at: float

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.refresh_at


def parse_token_response(response: httpx.Response, now: float | None = None) -> CachedToken:
    """Read a token endpoint's answer; raise :class:`HpcAuthError` (without secrets) if refused."""
    if not response.is_success:
        detail = ""
        try:
            error: Any = response.json()
            detail = f": {error.get('error', '')} {error.get('error_description', '')}".rstrip()
        except (ValueError, AttributeError):
            pass
        raise HpcAuthError(f"token endpoint answered {response.status_code}{detail}")
    try:
        body: Any = response.json()
        token = str(body["access_token"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HpcAuthError("token endpoint answer has no access_token") from exc
    lifetime = float(body.get("expires_in") or DEFAULT_LIFETIME_SECONDS)
    issued = time.time() if now is None else now
    margin = min(REFRESH_MARGIN_SECONDS, lifetime / 10)
    return CachedToken(token, issued + lifetime, issued + lifetime - margin)


class TokenCache:
    """Process-wide token store with one lock per key (thread side) and per loop (async side)."""

    def __init__(self) -> None:
        self._tokens: dict[str, CachedToken] = {}
        self._thread_lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._async_locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()

    def get(self, key: str) -> CachedToken | None:
        token = self._tokens.get(key)
        return token if token is not None and token.fresh() else None

    def put(self, key: str, token: CachedToken) -> None:
        self._tokens[key] = token

    def invalidate(self, key: str, token: str | None = None) -> None:
        """Drop the cached token (only if it is still ``token``, when given)."""
        current = self._tokens.get(key)
        if current is not None and (token is None or current.access_token == token):
            del self._tokens[key]

    def clear(self) -> None:
        self._tokens.clear()

    def thread_lock(self, key: str) -> threading.Lock:
        with self._thread_lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def async_lock(self, key: str) -> asyncio.Lock:
        locks = self._async_locks.setdefault(asyncio.get_running_loop(), {})
        return locks.setdefault(key, asyncio.Lock())


TOKEN_CACHE = TokenCache()


def credentials_identity(credentials: Credentials | None) -> str:
    """A digest naming whose requests these are (never the secret itself)."""
    if isinstance(credentials, StaticToken):
        return hashlib.sha256(credentials.token.encode()).hexdigest()
    if isinstance(credentials, ClientCredentials):
        return credentials.cache_key
    return "anonymous"


class HpcAuth(httpx.Auth):
    """Bearer authentication from :data:`Credentials`, as one sync and one async flow.

    OAuth2: the token comes from :data:`TOKEN_CACHE`; when it has none, one caller per
    key fetches it (the others wait on the key's lock) with a token request sent by the
    same client. A 401 drops the token (only if it is still the one sent), fetches a new
    one and resends the request once.
    """

    def __init__(
        self,
        credentials: Credentials | None,
        *,
        timeout: httpx.Timeout | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.credentials = credentials
        self.timeout = timeout or httpx.Timeout(30.0, connect=10.0)
        self.headers = headers or {}

    def _token_request(self, creds: ClientCredentials) -> httpx.Request:
        # Built here, not by the client: give it the client's timeout and headers.
        # Repeating a token request is harmless: the retry layer may resend it.
        return httpx.Request(
            "POST",
            creds.token_url,
            data=creds.form(),
            headers=self.headers,
            extensions={"timeout": self.timeout.as_dict()},
        )

    def _store(self, creds: ClientCredentials, token: CachedToken) -> None:
        TOKEN_CACHE.put(creds.cache_key, token)
        log.info(
            "Obtained an access token from %s (valid %.0f s)",
            creds.token_url,
            token.expires_at - time.time(),
        )

    def _drop(self, creds: ClientCredentials, request: httpx.Request) -> None:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        TOKEN_CACHE.invalidate(creds.cache_key, sent or None)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        creds = self.credentials
        if isinstance(creds, StaticToken):
            request.headers["Authorization"] = f"Bearer {creds.token}"
        if not isinstance(creds, ClientCredentials):
            yield request
            return
        for attempt in range(2):
            token = TOKEN_CACHE.get(creds.cache_key)
            if token is None:
                with TOKEN_CACHE.thread_lock(creds.cache_key):
                    token = TOKEN_CACHE.get(creds.cache_key)
                    if token is None:
                        response = yield self._token_request(creds)
                        response.read()
                        token = parse_token_response(response)
                        _mask(token.access_token)
                        self._store(creds, token)
            request.headers["Authorization"] = f"Bearer {token.access_token}"
            response = yield request
            if response.status_code != 401 or attempt:
                return
            self._drop(creds, request)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        creds = self.credentials
        if isinstance(creds, StaticToken):
            request.headers["Authorization"] = f"Bearer {creds.token}"
        if not isinstance(creds, ClientCredentials):
            yield request
            return
        for attempt in range(2):
            token = TOKEN_CACHE.get(creds.cache_key)
            if token is None:
                async with TOKEN_CACHE.async_lock(creds.cache_key):
                    token = TOKEN_CACHE.get(creds.cache_key)
                    if token is None:
                        response = yield self._token_request(creds)
                        await response.aread()
                        token = parse_token_response(response)
                        await _amask(token.access_token)
                        self._store(creds, token)
            request.headers["Authorization"] = f"Bearer {token.access_token}"
            response = yield request
            if response.status_code != 401 or attempt:
                return
            self._drop(creds, request)


def _mask(secret: str) -> None:
    """Keep the token out of task logs (Airflow imported lazily: only on a token fetch)."""
    from airflow.sdk.log import mask_secret

    mask_secret(secret)


async def _amask(secret: str) -> None:
    from airflow.sdk.log import amask_secret

    await amask_secret(secret)
