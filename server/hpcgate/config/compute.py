"""Compute: the scheduler, the job watcher and keyed (idempotent) submissions."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from hpcgate.config.base import Model


class SchedulerSettings(Model):
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
    sacct_path: str = Field(
        "sacct",
        max_length=4096,
        pattern=r"^(?:/[^\s=\x00-\x1f\x7f]*|[A-Za-z0-9_.-]+)$",
        description="sacct (accounting, slurmdbd) on the login node: a name looked up in "
        "the calling identity's PATH, or an absolute path",
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


class WatcherSettings(Model):
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


class IdempotencySettings(Model):
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
