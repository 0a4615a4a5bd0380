"""What an ``hpc`` connection says: API URL, credentials, default system, TLS, timeout.

Parsed once per hook from Airflow's ``Connection`` (sync lookup in workers, async in
triggers); the rest of the provider never reads connection fields itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_hpc.exceptions import HpcError
from airflow_provider_hpc.hooks.auth import ClientCredentials, Credentials, StaticToken


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
