"""Make Airflow 3.3.2's Test button work for ``hpc`` connections (apache/airflow#73298).

The connection list's Test button sends ``"port": 0`` for a connection without a port.
The API server takes that for another endpoint than the stored connection's and refuses
to test it with the stored token (400 "The host or port to test differs from the stored
connection"), before any provider code runs. For the ``hpc`` type a port of 0 means none
(``HpcConnectionConfig``), so this middleware drops ``"port": 0`` from ``hpc`` test
requests: the same endpoint as stored, and Airflow's check still refuses any other host
or port. Every other request passes untouched; a body is read (at most 64 KiB) only for
``POST .../api/v2/connections/test``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TEST_PATH = "/api/v2/connections/test"
MAX_BODY = 64 * 1024


def drop_port_zero(body: bytes) -> bytes | None:
    """The body without ``"port": 0`` if it tests an ``hpc`` connection, else None."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("conn_type") != "hpc":
        return None
    port = data.get("port")
    if port != 0 or isinstance(port, bool):  # 0 or 0.0, not false
        return None
    del data["port"]
    return json.dumps(data).encode()


class HpcTestButtonMiddleware:
    """Pure ASGI middleware, added to the API server by :class:`HpcProviderPlugin`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or path not in (TEST_PATH, scope.get("root_path", "") + TEST_PATH)
        ):
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if not message.get("more_body", False) or size > MAX_BODY:
                break
        last = read[-1]
        whole = last["type"] == "http.request" and not last.get("more_body") and size <= MAX_BODY
        changed = drop_port_zero(b"".join(m.get("body", b"") for m in read)) if whole else None
        if changed is not None:
            read = [{"type": "http.request", "body": changed, "more_body": False}]
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", b"%d" % len(changed))]}

        async def replay() -> Message:
            return read.pop(0) if read else await receive()

        await self.app(scope, replay, send)
