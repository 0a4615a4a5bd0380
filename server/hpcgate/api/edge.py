"""The edge of the API: what a request may cost before the application sees it.

Raw ASGI in front of the routes (FastAPI reads a JSON body whole
before it runs the dependency that checks the token: a 400 MB body without a token
cost the server 780 MB). Before anything of the body is read, it

* refuses a head with too many or too large headers (431);
* refuses a declared ``Content-Length`` over the route's cap (413);
* authenticates the bearer token of every route but the public ones (401), and
  leaves the ``Principal`` in ``scope["state"]`` for ``dependencies.authenticated``;
* takes a token from the user's bucket (429 with ``Retry-After``);

and then lets the application read the body through a guard that stops it at the
cap (a chunked body: 413) or when the client stalls between two pieces (408).
Every answer given here before the body was read whole closes the connection, so
an unread body is never drained.

Public routes: the liveness probe, ``/metrics`` (its own token), the API docs and
the signed transfer URLs and job pages, whose signature is their credential (checked
by their routes). They still get the body caps and timeouts.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hpcgate.api.ratelimit import TokenBuckets, retry_after_seconds
from hpcgate.auth.tokens import Principal
from hpcgate.config import Settings
from hpcgate.errors import (
    ApiError,
    PayloadTooLarge,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
)
from hpcgate.transfer.s3xml import MAX_COMPLETE_BODY
from hpcgate.wire import ErrorBody

__all__ = ["MULTIPART_OVERHEAD", "Edge"]

_CLOSE = (b"connection", b"close")
# The multipart framing ops/upload adds around the file (as its route allows).
MULTIPART_OVERHEAD = 64 * 1024

_PUBLIC_PATHS = frozenset(
    {
        "/status/liveness/",
        "/status/liveness",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)
# Path parameters match [^/]+, as in Starlette's routes; fullmatch only.
_SIGNED_URL = re.compile(
    r"/transfer-urls/[^/]+/(?:parts/[^/]+|complete|download)|/job-pages/[^/]+/[^/]+"
)
_PART = re.compile(r"/transfer-urls/[^/]+/parts/[^/]+")
_COMPLETE = re.compile(r"/transfer-urls/[^/]+/complete")
_OPS_UPLOAD = re.compile(r"/filesystem/([^/]+)/ops/upload")
_TUS_UPLOAD = re.compile(r"/filesystem/[^/]+/uploads/[^/]+")


@dataclass(frozen=True)
class BodyCap:
    """The most bytes a route's body may have, and the setting that says so."""

    limit: int
    setting: str


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request: the cap its body is read under (None: it has no body)."""

    body_cap: BodyCap | None


_NO_BODY = Admission(None)


class Edge:
    """Header limits, authentication, rate limit and body bounds, before the app.

    Not a middleware of its own: the request front (``hpcgate.api.middleware``)
    calls ``admit`` then ``forward`` from its one frame, so no frame of the edge is
    held while a stream or long-poll waits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http = settings.http
        limits = settings.rate_limit
        self.buckets = (
            TokenBuckets(limits.requests_per_second, limits.burst, limits.max_users)
            if limits.enabled
            else None
        )

    async def admit(self, scope: Scope, send: Send) -> Admission | None:
        """Check the head, the declared size, the token and the rate limit of an HTTP
        request; None when refused (the answer has been sent)."""
        state = scope.setdefault("state", {})
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        path = _route_path(scope)
        declared, chunked = _body_framing(headers)
        admission = _NO_BODY
        try:
            self._check_head(headers)
            if chunked or declared:
                cap = self.body_cap(scope["method"], path)
                if declared is not None and declared > cap.limit:
                    raise _too_large(cap)
                admission = Admission(cap)
            if not _is_public(path):
                principal = await self._authenticate(scope, headers)
                if principal is not None:
                    state["principal"] = principal
                    state["user"] = principal.username
                    self._take_token(principal.username)
        except ApiError as error:
            close = chunked or bool(declared) or error.status_code == 431
            await _reply(send, error, close=close, user=state.get("user"))
            return None
        return admission

    def forward(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, admission: Admission
    ) -> Awaitable[None]:
        """``app``'s answer to an admitted request: its body, if any, read through
        the guard of the cap it was admitted under and the read timeout."""
        if admission.body_cap is None:
            return app(scope, receive, send)  # nothing to guard: no frame of ours
        return self._serve_guarded(app, scope, receive, send, admission.body_cap)

    def body_cap(self, method: str, path: str) -> BodyCap:
        """The body cap of the route ``method path`` would reach."""
        if method == "POST" and (match := _OPS_UPLOAD.fullmatch(path)):
            system = self.settings.system(match.group(1))
            if system is not None:
                limit = system.filesystem_limits.max_ops_file_size + MULTIPART_OVERHEAD
                return BodyCap(limit, "filesystem_limits.max_ops_file_size")
        elif method == "PUT" and _PART.fullmatch(path):
            return BodyCap(self.settings.transfer.part_size, "transfer.part_size")
        elif method == "POST" and _COMPLETE.fullmatch(path):
            return BodyCap(MAX_COMPLETE_BODY, "the CompleteMultipartUpload limit")
        elif method == "PATCH" and _TUS_UPLOAD.fullmatch(path):
            return BodyCap(self.settings.transfer.max_file_size, "transfer.max_file_size")
        return BodyCap(self.http.max_json_body_bytes, "http.max_json_body_bytes")

    def _check_head(self, headers: list[tuple[bytes, bytes]]) -> None:
        if len(headers) > self.http.max_headers:
            raise RequestHeaderFieldsTooLarge(
                f"The request has {len(headers)} header lines; the limit is "
                f"{self.http.max_headers} (http.max_headers)"
            )
        size = sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.http.max_header_bytes:
            raise RequestHeaderFieldsTooLarge(
                f"The request headers exceed {self.http.max_header_bytes} bytes "
                "(http.max_header_bytes)"
            )

    async def _authenticate(
        self, scope: Scope, headers: list[tuple[bytes, bytes]]
    ) -> Principal | None:
        """The caller; None only before the services exist (the dependency checks then)."""
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if services is None:
            return None
        token = _bearer_token(headers)
        if token is None:
            raise Unauthorized("Missing bearer token (Authorization: Bearer <JWT>)")
        principal: Principal = await services.tokens.validate(token)
        return principal

    def _take_token(self, user: str) -> None:
        if self.buckets is None:
            return
        wait = self.buckets.take(user)
        if wait > 0:
            limits = self.settings.rate_limit
            retry = retry_after_seconds(wait)
            raise TooManyRequests(
                f"Too many requests: {limits.requests_per_second:g} per second per user "
                f"(bursts of {limits.burst}; rate_limit.requests_per_second, rate_limit.burst); "
                f"retry in {retry} s",
                retry_after=retry,
            )

    async def _serve_guarded(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, cap: BodyCap
    ) -> None:
        guard = _BodyGuard(receive, cap, self.http.body_read_timeout_seconds)
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if guard.error is not None and not started:
                return  # the app's answer to the aborted body is replaced below
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not guard.complete and _CLOSE not in headers:
                    # answered before the body was read whole: end the connection
                    # rather than drain what is left of the body
                    message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        try:
            await app(scope, guard.receive, guarded_send)
        except Exception:
            if guard.error is None or started:
                raise
        if guard.error is not None and not started:
            await _reply(send, guard.error, close=True, user=scope["state"].get("user"))


class _BodyGuard:
    """The body as the app reads it: counted against the cap, each read with a deadline."""

    def __init__(self, receive: Receive, cap: BodyCap, timeout: float) -> None:
        self._receive = receive
        self._cap = cap
        self._timeout = timeout
        self._received = 0
        self.complete = False
        self.error: ApiError | None = None

    async def receive(self) -> Message:
        if self.error is not None:
            raise type(self.error)(self.error.message)
        if self.complete:
            return await self._receive()  # waiting for the disconnect: no deadline
        try:
            async with asyncio.timeout(self._timeout):
                message = await self._receive()
        except TimeoutError:
            self.error = RequestTimeout(
                f"The request body stalled for {self._timeout:g} s (http.body_read_timeout_seconds)"
            )
            raise type(self.error)(self.error.message) from None
        if message["type"] != "http.request":
            self.complete = True
            return message
        self._received += len(message.get("body", b""))
        if self._received > self._cap.limit:
            self.error = _too_large(self._cap)
            raise type(self.error)(self.error.message)
        if not message.get("more_body", False):
            self.complete = True
        return message


def _too_large(cap: BodyCap) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body exceeds the limit of {cap.limit} bytes ({cap.setting})"
    )


def _route_path(scope: Scope) -> str:
    """The path routes match against (as Starlette's router strips ``root_path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _is_public(path: str) -> bool:
    return path in _PUBLIC_PATHS or _SIGNED_URL.fullmatch(path) is not None


def _body_framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(declared Content-Length, chunked?) of a request."""
    declared: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length" and value.strip().isdigit():
            declared = max(declared or 0, int(value))
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


def _bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of the first ``Authorization: Bearer <token>`` (as FastAPI's HTTPBearer)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return None
            return token
    return None


async def _reply(send: Send, error: ApiError, *, close: bool, user: str | None) -> None:
    """The FirecREST error body for ``error``; ``close`` ends the connection after it."""
    body = ErrorBody(message=error.message, caused_by=error.caused_by, user=user)
    content = json.dumps(
        body.model_dump(by_alias=True, mode="json"), ensure_ascii=False, separators=(",", ":")
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
    ]
    headers.extend((name.lower().encode(), value.encode()) for name, value in error.headers.items())
    if close:
        headers.append(_CLOSE)
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})
