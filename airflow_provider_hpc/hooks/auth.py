"""Credentials for the API: a static bearer token, or OAuth2 client credentials with a token cache.

Tokens are cached per process and per (token URL, client, scope, audience, secret digest),
so that many tasks or triggers in one process share one token, and are refreshed shortly
before they expire. Tokens and secrets never appear in ``repr`` or in logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import httpx

from airflow_provider_hpc.exceptions import HpcAuthError

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
            body = response.json()
            detail = f": {body.get('error', '')} {body.get('error_description', '')}".rstrip()
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
