"""A lean ASGI middleware: request id, F7T-AppVersion header, JSON access log, and
the request metrics (count and duration by route template and status).

Written against raw ASGI rather than ``BaseHTTPMiddleware`` so that it costs little
per request and never buffers streamed bodies.
"""

from __future__ import annotations

import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hpcgate.operations.metrics import Metrics

access_log = logging.getLogger("hpcgate.access")

_REQUEST_ID_HEADERS = (b"x-request-id", b"x-correlation-id")
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def _metrics(scope: Scope) -> Metrics | None:
    services = getattr(getattr(scope.get("app"), "state", None), "services", None)
    return getattr(services, "metrics", None)


class RequestContextMiddleware:
    """Echo the caller's request id (or mint one) and log each request once."""

    def __init__(self, app: ASGIApp, *, app_version: str) -> None:
        self.app = app
        self.app_version = app_version.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        echoed: list[tuple[bytes, bytes]] = []
        request_id = b""
        for name, value in scope["headers"]:
            if name in _REQUEST_ID_HEADERS and _SAFE_ID.match(value):
                echoed.append((name, value))
                request_id = request_id or value
        if not request_id:
            # 32 hex digits as before; an id, not a secret: no system randomness needed
            request_id = b"%032x" % random.getrandbits(128)
            echoed.append((b"x-request-id", request_id))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id.decode()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"f7t-appversion", self.app_version))
                headers.extend(echoed)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            seconds = time.perf_counter() - started
            access_log.info(
                "request",
                extra={
                    "request_id": state["request_id"],
                    "method": scope["method"],
                    "route": getattr(route, "path", scope["path"]),
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "user": state.get("user"),
                    "system": state.get("system"),
                },
            )
            metrics = _metrics(scope)
            if metrics is not None:
                # unmatched paths share one label: no series per probed URL
                template = getattr(route, "path", "<unmatched>")
                metrics.observe_request(scope["method"], template, status, seconds)
