"""``FileStreamResponse`` alone, driven as an ASGI server drives it: the body stops
when the client goes away (uvicorn's ``send`` drops what comes after, so nothing
else would stop it), and the cluster stream is closed however the response ends.
The real downloads and their quota slots are tested on the site
(``tests/filesystem/test_transfers.py``, ``test_stream_quota.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hpcgate.api.connection_httptools import DISCONNECT_EXTENSION
from hpcgate.api.streaming import FileStreamResponse
from hpcgate.filesystem.base import ReadStream

BLOCK = b"x" * 1024


class EndlessStream(ReadStream):
    """A file that never ends, counting what was read and whether it was closed."""

    def __init__(self) -> None:
        self.length = self.file_size = 1 << 40
        self.offset = 0
        self.blocks_read = 0
        self.closes = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.blocks_read += 1
            yield BLOCK
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        self.closes += 1


class Client:
    """The server side of one connection: collects what is sent; ``leave`` is the
    client closing its connection (reported as our httptools protocol does)."""

    def __init__(self, leave_after: int) -> None:
        self.leave_after = leave_after
        self.messages: list[dict[str, Any]] = []
        self.watchers: list[Callable[[], None]] = []

    def scope(self) -> dict[str, Any]:
        def watch(callback: Callable[[], None]) -> Callable[[], None]:
            self.watchers.append(callback)
            return lambda: self.watchers.remove(callback)

        return {"type": "http", "extensions": {DISCONNECT_EXTENSION: watch}}

    async def receive(self) -> dict[str, Any]:
        raise AssertionError("the disconnect comes from the protocol, not receive")

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if len(self.messages) == self.leave_after:
            for callback in list(self.watchers):
                callback()


async def test_a_client_that_leaves_mid_body_stops_the_reads() -> None:
    stream, client = EndlessStream(), Client(leave_after=4)  # the start and 3 blocks
    response = FileStreamResponse(stream, "data.bin")

    await response(client.scope(), client.receive, client.send)

    assert stream.blocks_read <= 4
    assert stream.closes >= 1
    assert client.watchers == []  # the watch is removed
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # our own cancel was taken back
    start = client.messages[0]
    assert start["status"] == 200
    assert (b"content-length", str(1 << 40).encode()) in start["headers"]
    assert (
        b"content-disposition",
        b"attachment; filename*=UTF-8''data.bin",
    ) in start["headers"]


async def test_a_client_gone_before_the_first_block_still_closes_the_stream() -> None:
    stream, client = EndlessStream(), Client(leave_after=1)  # leaves at the head
    await FileStreamResponse(stream, "a b.bin")(client.scope(), client.receive, client.send)
    assert stream.blocks_read <= 1
    assert stream.closes >= 1


async def test_a_cancellation_from_elsewhere_is_not_swallowed() -> None:
    """A server shutting down cancels the request: that must propagate."""
    stream, client = EndlessStream(), Client(leave_after=-1)
    task = asyncio.ensure_future(
        FileStreamResponse(stream, "f")(client.scope(), client.receive, client.send)
    )
    while stream.blocks_read < 3:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.closes >= 1


async def test_without_the_protocol_extension_receive_tells_the_disconnect() -> None:
    """Other servers (h11, test transports): a small task reads ``receive``."""
    stream, sent = EndlessStream(), []
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 5:
            gone.set()

    await FileStreamResponse(stream, "f")({"type": "http"}, receive, send)
    assert 4 <= stream.blocks_read <= 8
    assert stream.closes >= 1
