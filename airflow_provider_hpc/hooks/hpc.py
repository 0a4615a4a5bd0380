"""``HpcHook``: typed access to a FirecREST v2 compatible API, sync (workers) and async.

The hook is assembled from one module per concern: :mod:`.config` (the connection),
:mod:`.base` (clients, sending), :mod:`.auth` (``httpx.Auth``), :mod:`.retry` (the retry
transports), :mod:`.sync_api` / :mod:`.async_api` (endpoint methods), :mod:`.waiting`.
"""

from __future__ import annotations

from functools import cached_property

import httpx

from airflow_provider_hpc.exceptions import HpcAuthError, HpcError
from airflow_provider_hpc.get_provider_info import NAME
from airflow_provider_hpc.hooks.async_api import HpcAsyncApi
from airflow_provider_hpc.hooks.config import HpcConfigError, HpcConnectionConfig
from airflow_provider_hpc.hooks.retry import RetryPolicy, retry_after_seconds
from airflow_provider_hpc.hooks.sync_api import HpcSyncApi, file_digest
from airflow_provider_hpc.hooks.waiting import ErrorBudget


class HpcHook(HpcSyncApi, HpcAsyncApi):
    """Talk to a FirecREST v2 compatible API (``hpcgate``) for one connection.

    Connection: host = API URL (``https://api.example.org[/prefix]``); extra ``system``
    (default system), ``auth_method`` (``token`` | ``oauth2``), static token in password,
    or ``token_url`` / ``client_id`` / ``client_secret`` / ``scope`` / ``audience`` for
    OAuth2 client credentials; ``verify_tls``, ``ca_bundle``, ``timeout``.

    Sync methods run in workers; ``a``-prefixed methods are for triggers (async connection
    lookup, ``httpx.AsyncClient``). Both build the same :mod:`.api` calls and models, and
    authenticate and retry through the same ``httpx.Auth`` flow and retry policy.

    :param hpc_conn_id: Airflow connection id.
    :param system: default system (cluster) name; else the connection's ``system``.
    :param retry: retry policy for 429/5xx/transport errors (never for other 4xx).
    :param transport: custom httpx transport (tests, proxies); used for sync and async.
    """

    conn_name_attr = "hpc_conn_id"
    default_conn_name = "hpc_default"
    conn_type = "hpc"
    hook_name = NAME

    def fresh(self) -> HpcHook:
        """A hook with this one's settings and parsed connection but its own clients
        (for ``on_kill``, which may interrupt a request of this hook's client)."""
        other = HpcHook(self.hpc_conn_id, system=self.system, retry=self.retry)
        other.transport = self.transport
        other._config = self._config
        return other

    def test_connection(self) -> tuple[bool, str]:
        """Authenticate and list systems; check the configured system exists.

        Airflow's Test button runs this under a temporary connection id: messages name
        the API URL, never the id. (Airflow 3.3.2's button in the connection list sends
        ``port: 0``, which Airflow refuses before it gets here, apache/airflow#73298: the
        provider's plugin drops it, ``plugins/test_button.py``.)"""
        try:
            names = [system.name for system in self.list_systems()]
        except HpcConfigError as exc:
            return False, exc.problem
        except HpcAuthError as exc:
            return False, f"could not get a token for {self.config.base_url}: {exc}"
        except (HpcError, httpx.HTTPError, ValueError) as exc:
            return False, str(exc)
        wanted = self.system or self.config.system
        if wanted and wanted.lower() not in (name.lower() for name in names):
            return False, f"connected, but system {wanted!r} is not among {names}"
        return True, f"connected; systems: {', '.join(names) or '(none)'}"


class UsesHpcHook:
    """For operators and sensors: ``hook``, built once from ``hpc_conn_id`` and ``system``."""

    hpc_conn_id: str
    system: str | None

    @cached_property
    def hook(self) -> HpcHook:
        return HpcHook(self.hpc_conn_id, system=self.system)


__all__ = [
    "ErrorBudget",
    "HpcAuthError",
    "HpcConnectionConfig",
    "HpcHook",
    "RetryPolicy",
    "UsesHpcHook",
    "file_digest",
    "retry_after_seconds",
]
