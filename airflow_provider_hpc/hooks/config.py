"""What an ``hpc`` connection says: API URL, credentials, default system, TLS, timeout.

Parsed once per hook from Airflow's ``Connection`` (sync lookup in workers, async in
triggers); the rest of the provider never reads connection fields itself. Also the
words for a request that never got an answer (:func:`describe_transport_error`): they
name the URL and, for the usual mistakes (no server there, http spoken to https), the fix.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from airflow_provider_hpc.exceptions import HpcError
from airflow_provider_hpc.hooks.auth import ClientCredentials, Credentials, StaticToken

DEFAULT_TIMEOUT = 30.0


class HpcConfigError(HpcError):
    """The connection's fields are incomplete or wrong; ``problem`` without the id (the
    UI's Test button runs under a temporary id the user never saw)."""

    def __init__(self, conn_id: str | None, problem: str) -> None:
        self.problem = problem
        super().__init__(f"connection {conn_id!r}: {problem}" if conn_id else problem)


def _is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def api_url(conn: Any, extra: Mapping[str, Any]) -> tuple[str, bool]:
    """The API's base URL, and whether its scheme was guessed.

    A URL without a scheme (typed so in the form, or from a connection URI such as
    ``hpc://:token@127.0.0.1:8000``) takes ``schema`` when that is http(s), else http for
    a loopback host and https for any other. A port of 0 (what Airflow 3.3.2's UI sends
    for an empty port) means none."""
    conn_id = getattr(conn, "conn_id", None)
    raw = (conn.host or extra.get("api_url") or "").strip()
    if not raw:
        raise HpcConfigError(conn_id, "set the API URL (e.g. https://hpc-api.example.org)")
    guessed = "://" not in raw
    if guessed:
        schema = (conn.schema or "").strip().lower()
        host, slash, rest = raw.partition("/")
        has_port = ":" in host[host.rfind("]") + 1 :]
        port = f":{conn.port}" if conn.port and not has_port else ""
        hostname = urlsplit(f"//{host}").hostname or host
        scheme = schema if schema in ("http", "https") else None
        scheme = scheme or ("http" if _is_loopback(hostname) else "https")
        raw = f"{scheme}://{host}{port}{slash}{rest}"
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise HpcConfigError(conn_id, f"the API URL {raw!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HpcConfigError(
            conn_id,
            f"the API URL {raw!r} must be http(s)://host[:port][/prefix], "
            "e.g. https://hpc-api.example.org",
        )
    return raw.rstrip("/"), guessed


@dataclass(frozen=True)
class HpcConnectionConfig:
    """What an ``hpc`` connection says, parsed once (no secrets in ``repr``)."""

    base_url: str
    credentials: Credentials | None = field(repr=False)
    system: str | None = None
    verify: bool | str = True
    timeout: float = DEFAULT_TIMEOUT
    #: the API URL had no scheme: say so when the guess fails
    scheme_guessed: bool = False

    @classmethod
    def from_connection(cls, conn: Any, extra: Mapping[str, Any]) -> HpcConnectionConfig:
        conn_id = getattr(conn, "conn_id", None)
        # Values from older forms may carry the ``extra__hpc__`` prefix.
        extra = {str(k).removeprefix("extra__hpc__"): v for k, v in extra.items()}
        base_url, guessed = api_url(conn, extra)
        method = str(extra.get("auth_method") or "").lower()
        if not method:
            method = "oauth2" if extra.get("client_id") or extra.get("token_url") else "token"
        credentials: Credentials | None
        if method == "oauth2":
            token_url = extra.get("token_url")
            client_id = extra.get("client_id") or conn.login
            secret = extra.get("client_secret") or conn.password
            missing = [
                name
                for name, value in (
                    ("OAuth2 token URL", token_url),
                    ("OAuth2 client id", client_id),
                    ("OAuth2 client secret", secret),
                )
                if not value
            ]
            if missing:
                raise HpcConfigError(
                    conn_id, f"OAuth2 needs token_url, client_id, client_secret: set {missing}"
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
            raise HpcConfigError(
                conn_id, f"unknown auth_method {method!r}: use 'token' or 'oauth2'"
            )
        verify: bool | str = _as_bool(extra.get("verify_tls", True))
        if verify and extra.get("ca_bundle"):
            verify = str(extra["ca_bundle"])
        try:
            timeout = float(extra.get("timeout") or DEFAULT_TIMEOUT)
        except (TypeError, ValueError):
            raise HpcConfigError(conn_id, "timeout must be a number of seconds") from None
        if timeout <= 0:
            raise HpcConfigError(conn_id, "timeout must be a positive number of seconds")
        return cls(
            base_url=base_url,
            credentials=credentials,
            system=extra.get("system") or None,
            verify=verify,
            timeout=timeout,
            scheme_guessed=guessed,
        )


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(value)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe_transport_error(
    method: str, url: httpx.URL | str, exc: BaseException, *, scheme_guessed: bool = False
) -> str:
    """``METHOD URL: what happened`` for a request that got no answer, with the likely
    fix: nothing listening, a name that does not resolve, TLS spoken to plain HTTP."""
    if isinstance(exc, httpx.RequestError):
        try:  # the request that failed: the token URL's, when fetching a token failed
            failed = exc.request
            method, url = failed.method, failed.url
        except RuntimeError:
            pass
    where = str(httpx.URL(str(url)).copy_with(query=None))
    chain = _causes(exc)
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, ssl.SSLError) for e in chain) or "ssl" in text:
        if "wrong_version_number" in text or "record layer failure" in text:
            hint = (
                "the server does not speak HTTPS there (plain HTTP?): write the API URL "
                "with http://"
            )
        elif "certificate" in text:
            hint = "its certificate is not trusted: set a CA bundle (or fix the certificate)"
        else:
            hint = f"TLS failed: {exc}"
        if scheme_guessed:
            hint += " (the API URL had no scheme; https was assumed)"
    elif isinstance(exc, httpx.ConnectError) and (
        "refused" in text or "errno 111" in text or "connect call failed" in text
    ):
        hint = "connection refused: no server listens there (is the API URL right, is it up?)"
    elif isinstance(exc, httpx.ConnectError) and (
        "name or service not known" in text or "nodename nor servname" in text or "gaierror" in text
    ):
        hint = "the host name does not resolve (check the API URL)"
    elif isinstance(exc, httpx.TimeoutException):
        hint = f"no answer in time ({type(exc).__name__})"
    else:
        hint = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{method} {where}: {hint}"
