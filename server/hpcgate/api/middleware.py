"""The outermost layer of every request: request id, F7T-AppVersion header, the
edge's admission, the answer to an unhandled error, the JSON access log and the
request metrics (count and duration by route template and status).

``FrontedAPI`` is FastAPI whose own ``__call__`` does all of this in one coroutine
frame, in the order the separate layers had (Starlette's ``ServerErrorMiddleware``
outermost, then the request context, then the edge). Ten thousand open streams and
long-polls each hold the frames of the chain above them for the whole wait: four
frames and a closure became one (2.1 KB less per open client, bench/README.md).
Raw ASGI, never buffering a streamed body.
"""

from __future__ import annotations

import inspect
import logging
import random
import re
import time
from typing import Any

from fastapi import FastAPI
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hpcgate.api.edge import Edge
from hpcgate.config import Settings
from hpcgate.operations.metrics import Metrics

access_log = logging.getLogger("hpcgate.access")

_REQUEST_ID_HEADERS = (b"x-request-id", b"x-correlation-id")
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def _metrics(scope: Scope) -> Metrics | None:
    services = getattr(getattr(scope.get("app"), "state", None), "services", None)
    return getattr(services, "metrics", None)


class _Exchange:
    """One request's context: its ``send`` (adds our headers, notes the status), and
    its access log line and metrics, written once when it ends."""

    __slots__ = ("_send", "echoed", "started", "status", "version")

    def __init__(self, scope: Scope, send: Send, version: bytes) -> None:
        self.started = time.perf_counter()
        self._send = send
        self.version = version
        self.status: int | None = None  # set when the response starts
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
        self.echoed = echoed
        scope.setdefault("state", {})["request_id"] = request_id.decode()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = list(message.get("headers", []))
            headers.append((b"f7t-appversion", self.version))
            headers.extend(self.echoed)
            message = {**message, "headers": headers}
        await self._send(message)

    def log(self, scope: Scope) -> None:
        """The access log line and the metrics of the request (500 if nothing was sent)."""
        status = self.status or 500
        state = scope["state"]
        route = scope.get("route")
        seconds = time.perf_counter() - self.started
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


class FrontedAPI(FastAPI):
    """FastAPI entered through one frame that is every outer layer of a request."""

    def __init__(self, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edge = Edge(settings)
        self.app_version = settings.app_version.encode()
        self._error_handler: Any = None

    def build_middleware_stack(self) -> ASGIApp:
        """FastAPI's stack without its outermost ``ServerErrorMiddleware``, whose
        handler (the ``Exception`` handler) ``__call__`` runs instead; kept in
        debug mode or without a handler."""
        stack = super().build_middleware_stack()
        if isinstance(stack, ServerErrorMiddleware) and not stack.debug and stack.handler:
            self._error_handler = stack.handler
            return stack.app
        return stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.root_path:  # as FastAPI's and Starlette's own calls
            scope["root_path"] = self.root_path
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        app = self.middleware_stack
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        exchange = _Exchange(scope, send, self.app_version)
        try:
            admission = await self.edge.admit(scope, exchange)
            if admission is not None:
                await self.edge.forward(app, scope, receive, exchange, admission)
        except Exception as exc:
            # as ServerErrorMiddleware: the handler's answer if none was sent, and
            # the error raised on to the server (which logs it)
            if exchange.status is None and self._error_handler is not None:
                answer = self._error_handler(Request(scope), exc)
                response = await answer if inspect.isawaitable(answer) else answer
                await response(scope, receive, exchange)
            raise
        finally:
            exchange.log(scope)
