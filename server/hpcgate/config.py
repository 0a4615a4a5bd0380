"""The server's configuration: one YAML file, validated before anything starts.

A bad file fails at start with the field and the reason (``ConfigError``).
Environment variables prefixed ``HPCGATE_`` (nested with ``__``) override the file.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshSettings(_Model):
    """How to reach a cluster's login node."""

    host: str
    port: int = Field(22, ge=1, le=65535)
    known_hosts: Path = Field(description="OpenSSH known_hosts file holding the host key")
    connect_timeout: float = Field(10.0, gt=0)
    command_timeout: float = Field(60.0, gt=0, description="seconds before a command is 408")
    max_channels_per_connection: int = Field(
        32, ge=1, le=1024, description="keep below sshd's MaxSessions"
    )
    idle_timeout: float = Field(300.0, gt=0, description="close connections idle this long")
    keepalive_interval: float = Field(30.0, gt=0)
    ciphers: list[str] = Field(
        default_factory=lambda: [
            "aes128-gcm@openssh.com",
            "aes256-gcm@openssh.com",
            "chacha20-poly1305@openssh.com",
            "aes128-ctr",
            "aes256-ctr",
        ],
        min_length=1,
        description="preferred first: AES-GCM moves data ~2x faster than chacha20 where "
        "the CPU has AES instructions",
    )
    max_output_bytes: int = Field(
        64 * 1024**2,
        ge=64 * 1024,
        le=4 * 1024**3,
        description="largest stdout of one remote command (the user's login shell prints "
        "into it too), also the most stderr read; over it the command is stopped and the "
        "request fails with 502",
    )
    max_stderr_bytes: int = Field(
        1024**2,
        ge=4 * 1024,
        le=64 * 1024**2,
        description="stderr kept of one command for error messages (its head and tail); "
        "the rest is read and dropped",
    )
    max_output_bytes_per_user: int = Field(
        128 * 1024**2,
        ge=64 * 1024,
        le=16 * 1024**3,
        description="output held at once by all the running commands of one user on this "
        "system; the command that would go over it is stopped (502)",
    )

    @model_validator(mode="after")
    def _output_caps_fit(self) -> SshSettings:
        if self.max_stderr_bytes > self.max_output_bytes:
            raise ValueError("max_stderr_bytes must not exceed max_output_bytes")
        if self.max_output_bytes_per_user < self.max_output_bytes + self.max_stderr_bytes:
            raise ValueError(
                "max_output_bytes_per_user must be at least max_output_bytes + max_stderr_bytes"
            )
        return self


class CertificateAuthorityCredentials(_Model):
    """The server's own SSH CA signs short-lived certificates for each user."""

    kind: Literal["ca"] = "ca"
    ca_key: Path = Field(description="private key of the SSH user CA that sshd trusts")
    certificate_minutes: int = Field(10, ge=1, le=24 * 60)
    renew_before_seconds: int = Field(60, ge=1)

    @model_validator(mode="after")
    def _renewal_inside_validity(self) -> CertificateAuthorityCredentials:
        if self.renew_before_seconds >= self.certificate_minutes * 60:
            raise ValueError("renew_before_seconds must be shorter than the certificate's validity")
        return self


class StaticKeyCredentials(_Model):
    """Per-user private keys read from files (``{username}`` in the pattern)."""

    kind: Literal["static_keys"] = "static_keys"
    key_path: str = Field(description="path pattern, e.g. /etc/hpcgate/keys/{username}")

    @field_validator("key_path")
    @classmethod
    def _has_username(cls, value: str) -> str:
        if "{username}" not in value:
            raise ValueError("must contain {username}")
        return value


Credentials = Annotated[
    CertificateAuthorityCredentials | StaticKeyCredentials, Field(discriminator="kind")
]


class FileSystemSettings(_Model):
    """A filesystem of the cluster that the API may touch."""

    path: str
    data_type: Literal["users", "store", "archive", "apps", "scratch", "project"] = "users"
    default_work_dir: bool = False

    @field_validator("path")
    @classmethod
    def _absolute_normal(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts:
            raise ValueError("must be an absolute path without '..'")
        return str(path)


class FilesystemLimits(_Model):
    """Bounds on the direct filesystem operations (``/filesystem/{system}/ops/*``)."""

    max_ops_file_size: int = Field(
        64 * 1024**3,
        ge=0,
        description="largest file ops/upload and ops/download move (streamed); 413 over it",
    )
    max_content_size: int = Field(
        16 * 1024**2,
        ge=1,
        description="largest head/tail/view output (held in memory as JSON); 413 over it",
    )
    chunk_size: int = Field(
        1024**2, ge=16 * 1024, le=64 * 1024**2, description="bytes per streamed read/write"
    )
    max_recursion_depth: int = Field(
        64,
        ge=1,
        le=1024,
        description="deepest directory level a recursive listing (ls -R) descends to; "
        "400 naming this field below it",
    )
    max_listing_entries: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="most entries one listing (ls, ls -R) returns; 400 naming this field past it",
    )


class SchedulerSettings(_Model):
    """The cluster's workload manager."""

    type: Literal["slurm"] = "slurm"
    timeout: float = Field(30.0, gt=0, description="seconds for one scheduler command")
    transfer_partition: str | None = Field(
        None, description="partition for data-movement jobs (transfer/* endpoints)"
    )
    extra_sbatch_options: list[str] = Field(
        default_factory=list,
        description="long sbatch options (without '--') a job description may add",
    )
    job_visibility: Literal["own", "scheduler"] = Field(
        "own",
        description="own: callers see only their own jobs (others' answer 404); "
        "scheduler: what Slurm shows the caller (see hpcgate.compute.scheduler.visibility)",
    )
    sbatch_path: str = Field(
        "/usr/bin/sbatch",
        max_length=4096,
        pattern=r"^/[^\s=\x00-\x1f\x7f]*$",
        description="absolute path of sbatch on the login node, called when a job sets "
        "its own PATH (never learned from a user's shell); Debian and RHEL packages "
        "install it in /usr/bin",
    )
    max_list_window: int = Field(
        7 * 86400,
        ge=3600,
        le=366 * 86400,
        description="longest time_window (seconds) of a job listing; a longer one is a 400",
    )
    max_list_jobs: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="most jobs one listing answers: beyond it, the newest ones, with "
        "the header X-Hpcgate-Jobs-Truncated",
    )


class WatcherSettings(_Model):
    """The shared job watcher of a system (``hpcgate.compute.watcher``).

    Per round it runs one ``squeue`` for the watched jobs and, when some of them
    ended, one ``sacct``, whatever the number of waiting clients. With the
    system's ``service_user`` set it polls as that identity (who must see every
    user's jobs, i.e. no ``PrivateData=jobs`` for it); without one it polls per
    user, as each user, and nothing one user's commands print reaches another.
    Answers always follow ``scheduler.job_visibility``.
    """

    enabled: bool = True
    min_interval: float = Field(
        2.0,
        ge=0.2,
        le=600,
        description="seconds between rounds while watched jobs are pending, running or "
        "just changed (also the least time between two rounds)",
    )
    max_interval: float = Field(
        30.0, ge=0.2, le=3600, description="seconds between rounds when nothing is active"
    )
    interest_seconds: float = Field(
        60.0, gt=0, le=86400, description="how long a plain GET keeps a job watched"
    )
    retention_seconds: float = Field(
        3600.0,
        gt=0,
        le=7 * 86400,
        description="how long a job its owner watched is kept (with its events, for "
        "resume) once nobody watches it; other jobs go as soon as interest ends",
    )
    settle_seconds: float = Field(
        60.0, gt=0, description="how long to wait for accounting to settle an ended job"
    )
    history: int = Field(16, ge=1, le=1024, description="events kept per job for resume")
    heartbeat_seconds: float = Field(15.0, gt=0, le=300, description="SSE comment heartbeat")
    max_wait_seconds: float = Field(300.0, gt=0, description="largest long-poll timeout")
    max_stream_seconds: float = Field(
        3600.0, gt=0, description="an event stream closes after this long (clients resume)"
    )
    max_stream_jobs: int = Field(1000, ge=1, description="most job ids in one multi-job stream")
    max_subscribers: int = Field(
        20_000, ge=1, description="open streams and long-polls on the system at once"
    )
    max_subscribers_per_user: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="open streams and long-polls one user may hold on the system at once; "
        "429 with Retry-After beyond it",
    )
    max_unknown_ids_per_request: int = Field(
        20,
        ge=1,
        le=10_000,
        description="job ids one events request may name that the watcher does not know "
        "yet (all looked up in one squeue and one sacct); 400 beyond it",
    )
    max_leases_per_user: int = Field(
        2000,
        ge=1,
        le=1_000_000,
        description="job ids one user keeps watched by GETs and closed streams, and ended "
        "jobs kept for them; the oldest are dropped beyond it",
    )
    max_batch: int = Field(
        2000, ge=1, description="most job ids in one squeue -j or sacct -j of a round"
    )

    @model_validator(mode="after")
    def _ordered(self) -> WatcherSettings:
        if self.min_interval > self.max_interval:
            raise ValueError("min_interval must not exceed max_interval")
        return self


_ACCOUNT_NAME = r"^[a-z_][a-z0-9_-]{0,31}$"
_UID_MAX = 2**32 - 2


class AccountPolicySettings(_Model):
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


class SystemSettings(_Model):
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


class AuthSettings(_Model):
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


class HealthSettings(_Model):
    """The periodic health checker behind /status/systems."""

    interval_seconds: float = Field(30.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)


class TransferSettings(_Model):
    """The transfer/* endpoints: job logs, signed URLs, multipart and resumable uploads.

    ``signing_key`` signs the URLs that transfer/upload and transfer/download hand
    out (HMAC-SHA256). Without one, a random key is generated at start: URLs then
    stop working when the server restarts, and every server process behind one
    address needs the same configured key. The key is never logged.
    """

    signing_key: SecretStr | None = Field(
        None, min_length=32, description="HMAC key for signed transfer URLs (random if unset)"
    )
    public_url: str | None = Field(
        None,
        description="base URL clients reach this server at, for signed URLs "
        "(default: the URL of the request that created the transfer)",
    )
    url_ttl_seconds: int = Field(
        6 * 3600, ge=10, le=7 * 86400, description="lifetime of a transfer and its URLs"
    )
    part_size: int = Field(
        64 * 1024**2,
        ge=1024**2,
        le=5 * 1024**3,
        description="maxPartSize of multipart uploads (bytes per signed part URL)",
    )
    max_parts: int = Field(10_000, ge=1, le=100_000, description="most parts in one upload")
    max_file_size: int = Field(
        5 * 1024**4, ge=0, description="largest transfer/upload or resumable upload (bytes)"
    )
    max_active_per_user: int = Field(
        64, ge=1, le=10_000, description="unfinished transfers a user may hold at once"
    )
    job_directory: str = Field(
        "{home}/.hpcgate/transfers",
        description="where transfer jobs run and write their logs ({home}, {username}); "
        "must lie inside a configured filesystem",
    )
    job_time_limit_minutes: int = Field(
        12 * 60, ge=1, description="--time of mv/cp/rm/compress/extract jobs"
    )
    job_poll_seconds: float = Field(
        0.5, gt=0, le=60, description="how often an upload job looks for the completion marker"
    )

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") if value else value

    @field_validator("job_directory")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            value.format(home="/h", username="u")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{home}} and {{username}} may be used: {exc}") from None
        return value


class IdempotencySettings(_Model):
    """``Idempotency-Key`` on job submission (``hpcgate.compute.idempotency``)."""

    backend: Literal["sqlite", "redis"] = Field(
        "sqlite", description="sqlite (one server) or redis (replicas sharing the keys)"
    )
    path: Path | None = Field(
        None, description="SQLite file (default: <state_dir>/idempotency.sqlite3)"
    )
    redis_url: SecretStr | None = Field(
        None,
        description="redis://[user:password@]host[:port][/db], rediss://… or unix://…; "
        "required with backend redis (never logged)",
    )
    redis_key_prefix: str = Field("hpcgate:idem:", min_length=1, max_length=64)
    redis_lease_seconds: float = Field(
        15.0,
        ge=1,
        le=600,
        description="a submission in progress holds its key this long, renewed while it "
        "runs; other replicas wait for it, and take over once it lapses (its server died)",
    )
    ttl_hours: float = Field(
        7 * 24.0, gt=0, description="how long a key is remembered after its submission"
    )
    max_keys_per_user: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="live keys (not yet expired) one user may hold on one system; a new "
        "key beyond it is a 429 with Retry-After (when the oldest key expires)",
    )
    fault_delay_before_record: float = Field(
        0.0, ge=0, le=600, description="TEST ONLY: sleep after sbatch, before recording the job"
    )
    fault_delay_before_response: float = Field(
        0.0, ge=0, le=600, description="TEST ONLY: sleep after recording, before answering"
    )
    fault_key_prefix: str = Field(
        "", description="TEST ONLY: the fault delays apply to keys starting with this"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        # the messages never quote the URL: it may hold a password
        if value is not None:
            url = value.get_secret_value()
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("must be a redis://, rediss:// or unix:// URL")
            if url.split("://", 1)[1] in ("", "/"):
                raise ValueError("has no host or socket path")
        return value

    @model_validator(mode="after")
    def _backend_needs(self) -> IdempotencySettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("backend redis needs redis_url")
        return self


class MetricsSettings(_Model):
    """``/metrics`` (Prometheus text format).

    Without ``bearer_token_file`` it answers anyone: it holds no user names, only
    route templates, system names and counts; restrict it at the network level. With
    one, a scraper must send ``Authorization: Bearer <the file's content>``.
    """

    enabled: bool = True
    bearer_token_file: Path | None = None


class HttpSettings(_Model):
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


class RateLimitSettings(_Model):
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
