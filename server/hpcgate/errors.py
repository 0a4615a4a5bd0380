"""The errors the API answers with, mapped to FirecREST v2's status codes.

Modules below the routes raise these; one exception handler (see ``app.py``) turns
them into FirecREST's error body. Nothing else should build an error response.
"""

from __future__ import annotations

from typing import Literal


class ApiError(Exception):
    """An error with an HTTP status and a message safe to show to the caller."""

    status_code: int = 500
    error_type: Literal["error", "validation"] = "error"

    def __init__(
        self,
        message: str,
        *,
        caused_by: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.caused_by = caused_by
        self.headers = headers or {}


class BadRequest(ApiError):
    """The caller's fault: bad values, or the scheduler rejected the request."""

    status_code = 400


class Unauthorized(ApiError):
    """Missing, invalid or expired token."""

    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    """Not allowed on this system, path or object."""

    status_code = 403


class NotFound(ApiError):
    """Unknown system, job, or path ("No such file or directory")."""

    status_code = 404


class Conflict(ApiError):
    """The request conflicts with what exists (an idempotency key reused, say)."""

    status_code = 409


class RequestTimeout(ApiError):
    """A remote command did not finish in time (pyfirecrest falls back on 408)."""

    status_code = 408


class PayloadTooLarge(ApiError):
    """Output or upload over the configured direct-transfer cap."""

    status_code = 413


class RequestHeaderFieldsTooLarge(ApiError):
    """A request head over ``http.max_header_bytes`` or ``http.max_headers``."""

    status_code = 431


class UnprocessableEntity(ApiError):
    """Well-formed but semantically wrong (same idempotency key, other body)."""

    status_code = 422


class TooManyRequests(ApiError):
    """The caller holds its share of a per-user quota or rate; retry later."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ClusterUnreachable(ApiError):
    """SSH to the cluster failed: an infrastructure fault, worth a retry later."""

    status_code = 424

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class InternalError(ApiError):
    """A fault on our side; the message never leaks internals."""

    status_code = 500


class BadGateway(ApiError):
    """The scheduler answered with something we could not understand or use."""

    status_code = 502

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class OutputTooLarge(BadGateway):
    """A remote command printed more than a configured cap and was stopped.

    A 502 because the output is the remote side's (the user's login shell included);
    a caller whose own request chose the output may re-raise it as a 4xx. ``limit``
    is the cap in bytes and ``setting`` the configuration field that sets it.
    """

    def __init__(self, message: str, *, limit: int, setting: str) -> None:
        ApiError.__init__(self, message)  # no Retry-After: the same command prints as much
        self.limit = limit
        self.setting = setting


class ServiceUnavailable(ApiError):
    """A service needed by the route is unhealthy or temporarily failing."""

    status_code = 503

    def __init__(self, message: str, *, retry_after: int = 10) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
