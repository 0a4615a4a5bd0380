"""Errors raised by the HPC provider."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowException

#: HTTP statuses that describe a passing condition on the server side.
#: 408: command timed out, 424: cluster unreachable, 429: rate limited.
TRANSIENT_STATUSES = frozenset({408, 424, 429})


class HpcError(AirflowException):
    """Base class of the provider's errors."""


class HpcConnectionError(HpcError):
    """The API could not be reached (after retries)."""

    transient = True


class HpcAuthError(HpcError):
    """The token endpoint refused or failed to issue a token."""


class HpcApiError(HpcError):
    """The API answered with an error status (body ``{errorType, message, ...}``)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str | None = None,
        method: str = "",
        url: str = "",
        body: Any = None,
    ) -> None:
        # AirflowException declares status_code as an HTTPStatus; the API may answer any code
        self.status_code = status_code  # type: ignore[assignment]
        self.message = message
        self.error_type = error_type
        self.method = method
        self.url = url
        self.body = body
        super().__init__(f"{method} {url} -> {status_code}: {message}".strip())

    @property
    def transient(self) -> bool:
        """Whether waiting and asking again may succeed."""
        return self.status_code in TRANSIENT_STATUSES or self.status_code >= 500


class HpcPreflightUnsupported(HpcError):
    """The server ignored the dry-run flag and submitted the job (a plain FirecREST
    server): ``job_id`` names it, so that the caller cancels it."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"the server does not support pre-flight checks (dryRun): it submitted job "
            f"{job_id} instead; pre-flight needs hpcgate (set preflight=False otherwise)"
        )


class HpcNotFoundError(HpcApiError):
    """404: unknown job, system, or no such file or directory."""


class HpcJobError(HpcError):
    """A job ended in a state other than COMPLETED, or could not be waited for."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        state: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        self.job_id = job_id
        self.state = state
        self.exit_code = exit_code
        super().__init__(message)


class HpcChecksumError(HpcError):
    """A staged file's checksum differs between the two ends."""
