"""Streamed responses sent from the request's own task, stopped when the client goes.

Starlette's ``StreamingResponse`` runs the body in an anyio task group beside a
second task that reads ``receive`` for the disconnect: two tasks, a task group and
a cancel scope per response, and every chunk's ``send`` through them. A download
sends thousands of 255 KiB blocks and ten thousand event streams are held open at
once, so here the body is sent by the request's task itself, and the client's
disconnect cancels that task (``watch_disconnect``): under our httptools protocol
the connection's ``connection_lost`` reports it, with nothing held per request but
a callback. uvicorn's ``send`` silently drops what is sent after the client left,
so without the watch a download would go on reading the whole file from the
cluster for nobody.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from urllib.parse import quote

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from hpcgate.api.connection_httptools import DISCONNECT_EXTENSION
from hpcgate.filesystem.base import ReadStream


class ClientBoundStreamingResponse(StreamingResponse):
    """A streamed body that ends with its client; ``on_close`` runs once it is done,
    however it ends (also when the body never started, whose own ``finally`` would
    then not run)."""

    on_close: Callable[[], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False
        done = False

        def disconnected() -> None:
            nonlocal gone
            if not done:
                gone = True
                task.cancel()

        unwatch = watch_disconnect(scope, receive, disconnected)
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                body = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await self.sent()
        except OSError:
            pass  # the client went away while we wrote
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # our own cancellation: the client went away
        finally:
            done = True
            unwatch()
            try:
                close = getattr(self.body_iterator, "aclose", None)
                if close is not None:
                    await close()
            finally:
                if self.on_close is not None:
                    self.on_close()

    async def sent(self) -> None:
        """Called once the whole body is sent, before teardown (a hook)."""


class FileStreamResponse(ClientBoundStreamingResponse):
    """A file's bytes from the cluster, as an attachment; the ``ReadStream`` is always
    closed (its SFTP handle and its place in the user's stream quota given back),
    even if the client goes away before the first block."""

    def __init__(self, stream: ReadStream, filename: str) -> None:
        self._stream = stream
        disposition = "attachment; filename*=UTF-8''" + quote(filename, safe="")
        super().__init__(
            stream.__aiter__(),
            media_type="application/octet-stream",
            headers={"Content-Length": str(stream.length), "Content-Disposition": disposition},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.aclose()


def watch_disconnect(
    scope: Scope, receive: Receive, callback: Callable[[], None]
) -> Callable[[], object]:
    """Call ``callback`` once when the client goes away; returns what stops the watch.

    Under our httptools protocol its ``connection_lost`` calls back (nothing held per
    request but the callback); elsewhere (h11, test transports) one small task reads
    ``receive`` until ``http.disconnect`` (a failing ``receive`` counts as gone)."""
    watch = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
    if watch is not None:
        unwatch: Callable[[], object] = watch(callback)
        return unwatch
    task = asyncio.ensure_future(_until_disconnect(receive))
    task.add_done_callback(functools.partial(_ended, callback))
    return task.cancel


def _ended(callback: Callable[[], None], task: asyncio.Future[None]) -> None:
    if task.cancelled():
        return
    task.exception()  # retrieved: never logged as unhandled
    callback()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
