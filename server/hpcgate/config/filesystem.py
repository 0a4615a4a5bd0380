"""Filesystems: the configured roots, the bounds on direct operations, transfers."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    field_validator,
)

from hpcgate.config.base import Model


class FileSystemSettings(Model):
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


class FilesystemLimits(Model):
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
    max_streams_per_user: int = Field(
        16,
        ge=1,
        le=1024,
        description="streamed reads and writes (downloads, uploads, parts) one user may "
        "have open at once on a system, each holding up to 4 MiB; 429 naming this field "
        "over it (split between workers)",
    )


class TransferSettings(Model):
    """The transfer/* endpoints: job logs, signed URLs, multipart and resumable uploads.

    ``signing_key`` signs the URLs that transfer/upload and transfer/download hand
    out (HMAC-SHA256). Without one, a key is made once into the state directory
    (reused after restarts); every server process behind one address needs the same
    configured key. The key is never logged.
    """

    signing_key: SecretStr | None = Field(
        None,
        min_length=32,
        description="HMAC key for signed transfer URLs (unset: made once into "
        "<state_dir>/transfer-signing.key, 0600; replicas need this one set)",
    )
    store: Literal["auto", "sqlite", "redis"] = Field(
        "auto",
        description="where unfinished transfers are kept: sqlite (one server), redis "
        "(replicas; the idempotency.redis_url connection), auto: redis when "
        "idempotency.backend is redis",
    )
    store_path: Path | None = Field(
        None, description="SQLite file (default: <state_dir>/transfers.sqlite3)"
    )
    redis_key_prefix: str = Field("hpcgate:xfer:", min_length=1, max_length=64)
    reap_interval_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="how often expired and orphaned transfers are cleaned up (jobs "
        "cancelled, temporary files removed); also once at start",
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
