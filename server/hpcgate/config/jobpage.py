"""The browser job page: signed, expiring links a person can open without a token."""

from __future__ import annotations

from pydantic import Field, field_validator

from hpcgate.config.base import Model

_PLACEHOLDERS = {"system": "s", "job_id": "1", "user": "u"}


class JobPageSettings(Model):
    """``/job-pages/{system}/{job_id}``: a read-only HTML view of one job (state, times,
    exit code, the tail of its output), for its owner's link.

    ``POST /compute/{system}/jobs/{id}/page-link`` mints the link for the job's owner:
    signed (the transfer signing key), bound to system, job and user, expiring after
    ``link_ttl_seconds``. Centres with their own portal set ``url_template`` instead:
    the endpoint then answers that URL and the signed page is not served.
    """

    enabled: bool = Field(True, description="serve signed job pages and mint their links")
    link_ttl_seconds: int = Field(
        7 * 86400,
        ge=60,
        le=90 * 86400,
        description="how long a minted job link works (the provider mints one at submit "
        "and another when the job ends)",
    )
    public_url: str | None = Field(
        None,
        description="base URL browsers reach this server at (default: transfer.public_url, "
        "else the URL of the request that minted the link)",
    )
    url_template: str | None = Field(
        None,
        description="a portal's job URL instead of the signed page, with {system}, "
        "{job_id} and {user}, e.g. https://portal.example.org/jobs/{system}/{job_id}",
    )
    output_lines: int = Field(
        200, ge=0, le=10_000, description="lines of stdout and of stderr the page shows"
    )
    output_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=4 * 1024**2,
        description="bytes read from the end of stdout and of stderr, at most",
    )
    cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="a page is rendered at most once per this many seconds per link "
        "(the scheduler and filesystem are asked again only after it)",
    )

    @field_validator("public_url", "url_template")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") if value else value

    @field_validator("url_template")
    @classmethod
    def _placeholders(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format(**_PLACEHOLDERS)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"only {{system}}, {{job_id}} and {{user}} may be used: {exc}"
                ) from None
        return value
