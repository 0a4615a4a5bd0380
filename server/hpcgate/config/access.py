"""Who may call and how: tokens (auth), which accounts are served, the HTTP edge."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from hpcgate.config.base import Model

_ACCOUNT_NAME = r"^[a-z_][a-z0-9_-]{0,31}$"
_UID_MAX = 2**32 - 2


class AccountPolicySettings(Model):
    """Which Unix accounts tokens may act as on a system (``hpcgate.auth.accounts``).

    Checked before any SSH connection is made for a request. Root, accounts below
    ``min_uid`` or above ``max_uid``, the overflow ids (nobody), the system's
    ``service_user`` (and any account sharing its uid) are always refused; ``allow``
    and ``deny`` narrow further. Uids come from a trusted source, never from the
    caller's own session: ``service`` runs ``getent passwd`` as ``service_user``;
    ``local`` asks the gateway host's NSS (its directory must be the cluster's);
    ``none`` knows no uids, so it needs an ``allow`` list. ``auto``: ``service``
    with a ``service_user``, else ``local``.
    """

    source: Literal["auto", "service", "local", "none"] = Field(
        "auto",
        description="where uids come from: service (getent as service_user), local (the "
        "gateway host's NSS), none (lists only; needs allow); auto: service with a "
        "service_user, else local",
    )
    min_uid: int = Field(
        1000, ge=1, le=_UID_MAX, description="lowest uid served (system accounts lie below)"
    )
    max_uid: int = Field(
        60000,
        ge=1,
        le=_UID_MAX,
        description="highest uid served (login.defs UID_MAX; nobody is 65534); raise it "
        "for directories with larger uids",
    )
    allow: list[Annotated[str, Field(pattern=_ACCOUNT_NAME)]] | None = Field(
        None, max_length=100_000, description="if set, only these accounts are served"
    )
    deny: list[Annotated[str, Field(pattern=_ACCOUNT_NAME)]] = Field(
        default_factory=list, max_length=100_000, description="accounts never served"
    )
    positive_ttl_seconds: float = Field(
        300.0, ge=0, le=86400, description="how long a found account's uid is remembered"
    )
    negative_ttl_seconds: float = Field(
        60.0, ge=0, le=86400, description="how long an unknown account stays unknown"
    )
    cache_size: int = Field(
        10_000, ge=1, le=1_000_000, description="most accounts remembered (oldest dropped)"
    )
    lookup_timeout: float = Field(
        10.0, gt=0, le=300, description="seconds for one account lookup (503 over it)"
    )
    max_concurrent_lookups: int = Field(
        4,
        ge=1,
        le=256,
        description="lookups of different accounts running at once (they share the "
        "service_user's connection with health checks and the watcher)",
    )

    @field_validator("allow")
    @classmethod
    def _allow_not_root(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and "root" in value:
            raise ValueError("root is never served: remove it from the allow list")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AccountPolicySettings:
        if self.min_uid > self.max_uid:
            raise ValueError("accounts.min_uid must not exceed accounts.max_uid")
        if self.source == "none":
            if self.allow is None:
                raise ValueError(
                    "accounts.source none knows no uids, so accounts.allow must list the "
                    "accounts served"
                )
            for name in ("min_uid", "max_uid"):
                if name in self.model_fields_set:
                    raise ValueError(
                        f"accounts.{name} needs uids: use accounts.source service or local"
                    )
        return self

    def resolved_source(self, service_user: str | None) -> Literal["service", "local", "none"]:
        """The source ``auto`` stands for on a system with this ``service_user``."""
        if self.source == "auto":
            return "service" if service_user else "local"
        return self.source


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_jwks_url(url: str) -> None:
    """https, or plain http to a loopback host: the keys decide who is authenticated.

    The host is the one the fetch (httpx) will connect to, parsed, never a string
    prefix: ``http://127.0.0.1.evil.com`` and ``http://localhost@evil`` are not
    loopback. A URL that urllib reads with another host is refused as ambiguous.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"is not a valid URL: {exc}") from None
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ValueError("must be an https URL with a host")
    if parsed.userinfo:
        raise ValueError("must not hold user information (user@host)")
    try:
        other_host = urlsplit(url).hostname or ""
    except ValueError:
        other_host = ""
    if other_host.lower() != parsed.host.lower():
        raise ValueError("is ambiguous: URL parsers disagree on its host")
    if parsed.scheme == "http" and not _is_loopback(parsed.host):
        raise ValueError("must be https (plain http only to a loopback host)")


class AuthSettings(Model):
    """How bearer tokens are validated (offline, against a JWKS)."""

    issuer: str
    audience: str
    jwks_url: str | None = Field(None, description="https URL of the issuer's JWKS")
    jwks_file: Path | None = Field(None, description="a JWKS file on disk")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    username_claim: str = "preferred_username"
    scope_claim: str = "scope"
    leeway_seconds: int = Field(30, ge=0, le=300, description="clock skew tolerated")
    jwks_refresh_min_seconds: float = Field(
        30.0, ge=0, description="at most one JWKS refresh per this many seconds on unknown kid"
    )
    verified_cache_size: int = Field(
        4096,
        ge=0,
        le=1_000_000,
        description="verified tokens remembered (by SHA-256) until they expire; 0: none",
    )

    @field_validator("jwks_url")
    @classmethod
    def _https_or_loopback(cls, value: str | None) -> str | None:
        if value is not None:
            _check_jwks_url(value)
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> AuthSettings:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("set exactly one of jwks_url and jwks_file")
        if "none" in (alg.lower() for alg in self.algorithms):
            raise ValueError("the 'none' algorithm is never accepted")
        return self


class HttpSettings(Model):
    """Bounds on what one HTTP request may cost before it is authenticated and served.

    Checked at the edge (``hpcgate.api.edge``) and by the connection protocol
    (``hpcgate.api.connection``), before the application reads anything: a request
    without a valid token costs at most its head and is answered at once.
    Streaming upload routes take their caps from the settings they serve
    (``filesystem_limits.max_ops_file_size``, ``transfer.part_size``,
    ``transfer.max_file_size``); every other route gets ``max_json_body_bytes``.
    """

    max_json_body_bytes: int = Field(
        1024**2,
        ge=1024,
        le=1024**3,
        description="largest body of a non-upload route (job submissions, file operation "
        "requests); 413 over it, from Content-Length before reading, or once a chunked "
        "body passes it",
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=4 * 1024,
        le=1024**2,
        description="largest request head (request line and headers; a token may take "
        "32 KiB); 431 over it and the connection is closed",
    )
    max_headers: int = Field(
        100, ge=8, le=10_000, description="most header lines in a request; 431 over it"
    )
    header_read_timeout_seconds: float = Field(
        10.0,
        ge=0.1,
        le=300,
        description="a request head must arrive whole within this many seconds of its "
        "first byte (or of the connection's opening); else 408 and the connection closes",
    )
    body_read_timeout_seconds: float = Field(
        30.0,
        ge=0.1,
        le=3600,
        description="longest wait for the next piece of a request body; past it 408 and "
        "the connection closes",
    )
    keep_alive_timeout_seconds: int = Field(
        5, ge=1, le=300, description="an idle keep-alive connection closes after this long"
    )
    protocol: Literal["httptools", "h11"] = Field(
        "httptools",
        description="the HTTP/1.1 parser of `hpcgate serve` (both bounded as above); "
        "httptools costs a third of h11's CPU per request",
    )


class RateLimitSettings(Model):
    """A token bucket per authenticated user (``hpcgate.api.ratelimit``).

    Every request with a valid token takes one token from its user's bucket (an
    event stream or long-poll counts once, when it opens); an empty bucket answers
    429 with ``Retry-After``. Requests without a token, the signed transfer URLs and
    the public routes are not counted here.
    """

    enabled: bool = True
    requests_per_second: float = Field(
        20.0, gt=0, le=100_000, description="sustained requests per second of one user"
    )
    burst: int = Field(
        1200,
        ge=1,
        le=1_000_000,
        description="requests one user may make at once after being idle (the bucket's size)",
    )
    max_users: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="buckets kept at once (refilled ones are dropped first; memory bound)",
    )
