"""The whole configuration: systems, the top-level settings, and loading the file.

A bad file fails at start with the field and the reason (``ConfigError``).
Environment variables prefixed ``HPCGATE_`` (nested with ``__``) override the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hpcgate.config.access import (
    AccountPolicySettings,
    AuthSettings,
    HttpSettings,
    RateLimitSettings,
)
from hpcgate.config.base import ConfigError, Model
from hpcgate.config.compute import IdempotencySettings, SchedulerSettings, WatcherSettings
from hpcgate.config.filesystem import FilesystemLimits, FileSystemSettings, TransferSettings
from hpcgate.config.jobpage import JobPageSettings
from hpcgate.config.ssh import Credentials, SshSettings


class SystemSettings(Model):
    """One cluster ("system") served by this API."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    ssh: SshSettings
    credentials: Credentials
    scheduler: SchedulerSettings = SchedulerSettings()
    filesystems: list[FileSystemSettings] = Field(default_factory=list)
    filesystem_limits: FilesystemLimits = FilesystemLimits()
    required_scopes: list[str] = Field(
        default_factory=list, description="token scopes a caller must hold for this system"
    )
    service_user: str | None = Field(
        None,
        pattern=r"^[a-z_][a-z0-9_.-]{0,31}$",
        description="the gateway's own account on the cluster: health probes and the "
        "shared job watcher run as it, never as an API user; no token may map to it. "
        "Without one only the SSH banner is probed and the watcher polls as each user",
    )
    watcher: WatcherSettings = WatcherSettings()
    accounts: AccountPolicySettings = Field(
        default_factory=AccountPolicySettings,
        description="which Unix accounts tokens may act as (checked before any SSH)",
    )

    @model_validator(mode="after")
    def _service_user_is_no_api_user(self) -> SystemSettings:
        service = self.service_user
        allow = self.accounts.allow
        if service is not None and allow is not None and service in allow:
            raise ValueError(
                f"accounts.allow names service_user {service!r}: the service identity "
                "is never an API user"
            )
        if self.accounts.source == "service" and service is None:
            raise ValueError("accounts.source service needs service_user (getent runs as it)")
        return self


class HealthSettings(Model):
    """The periodic health checker behind /status/systems."""

    interval_seconds: float = Field(30.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)
    retry_seconds: float = Field(
        1.0,
        gt=0,
        le=300,
        description=(
            "After a failed check, the service is checked again this many seconds later,"
            " then twice as long after each further failure, up to interval_seconds; a"
            " request refused with 503 brings the next check forward to no sooner than"
            " this after the last one (one check in flight per service, shared)."
            " Retry-After on the 503 is the seconds until that check."
        ),
    )


class MetricsSettings(Model):
    """``/metrics`` (Prometheus text format).

    Without ``bearer_token_file`` it answers anyone: it holds no user names, only
    route templates, system names and counts; restrict it at the network level. With
    one, a scraper must send ``Authorization: Bearer <the file's content>``.
    """

    enabled: bool = True
    bearer_token_file: Path | None = None


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="HPCGATE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    auth: AuthSettings
    systems: list[SystemSettings] = Field(min_length=1)
    health: HealthSettings = HealthSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    metrics: MetricsSettings = MetricsSettings()
    http: HttpSettings = HttpSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    state_dir: Path | None = Field(
        None,
        description="where the server keeps state (default $XDG_STATE_HOME/hpcgate, "
        "else ~/.local/state/hpcgate)",
    )
    transfer: TransferSettings = TransferSettings()
    job_page: JobPageSettings = JobPageSettings()
    app_version: str = Field(
        "2.6.0", description="sent as F7T-AppVersion (pyfirecrest gates on it)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("systems")
    @classmethod
    def _unique_names(cls, systems: list[SystemSettings]) -> list[SystemSettings]:
        seen: set[str] = set()
        for system in systems:
            key = system.name.lower()
            if key in seen:
                raise ValueError(
                    f"system name {system.name!r} appears twice (names are case-insensitive)"
                )
            seen.add(key)
        return systems

    def state_path(self) -> Path:
        """The state directory (not created here)."""
        if self.state_dir is not None:
            return self.state_dir.expanduser()
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "hpcgate"

    def system(self, name: str) -> SystemSettings | None:
        """The system called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((s for s in self.systems if s.name.lower() == wanted), None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment overrides the file's values, which arrive as init kwargs
        return env_settings, init_settings


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def load_settings(path: str | Path) -> Settings:
    """Read and validate the YAML configuration at ``path``."""
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration {path} must be a mapping at the top level")
    try:
        return Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration {path}:\n{_describe(exc)}") from exc
