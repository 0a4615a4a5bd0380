"""The server's configuration: one YAML file, validated before anything starts.

A bad file fails at start with the field and the reason (``ConfigError``).
Environment variables prefixed ``HPCGATE_`` (nested with ``__``) override the file.

By area: ``ssh`` (connections, credentials), ``compute`` (scheduler, watcher,
idempotency), ``filesystem`` (roots, limits, transfers), ``access`` (auth, accounts,
the HTTP edge), ``settings`` (systems, the top level, loading). Import the names
from here: ``from hpcgate.config import Settings``.
"""

from __future__ import annotations

from hpcgate.config.access import (
    AccountPolicySettings,
    AuthSettings,
    HttpSettings,
    RateLimitSettings,
)
from hpcgate.config.base import ConfigError
from hpcgate.config.compute import IdempotencySettings, SchedulerSettings, WatcherSettings
from hpcgate.config.filesystem import FilesystemLimits, FileSystemSettings, TransferSettings
from hpcgate.config.jobpage import JobPageSettings
from hpcgate.config.settings import (
    HealthSettings,
    MetricsSettings,
    Settings,
    SystemSettings,
    load_settings,
)
from hpcgate.config.ssh import (
    CertificateAuthorityCredentials,
    Credentials,
    SshSettings,
    StaticKeyCredentials,
)

__all__ = [
    "AccountPolicySettings",
    "AuthSettings",
    "CertificateAuthorityCredentials",
    "ConfigError",
    "Credentials",
    "FileSystemSettings",
    "FilesystemLimits",
    "HealthSettings",
    "HttpSettings",
    "IdempotencySettings",
    "JobPageSettings",
    "MetricsSettings",
    "RateLimitSettings",
    "SchedulerSettings",
    "Settings",
    "SshSettings",
    "StaticKeyCredentials",
    "SystemSettings",
    "TransferSettings",
    "WatcherSettings",
    "load_settings",
]
