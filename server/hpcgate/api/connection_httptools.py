"""uvicorn's httptools protocol with the bounds of ``BoundedH11Protocol``.

httptools (llhttp, in C) parses a request for about a third of the CPU of h11
(bench/README.md), but it accepts a request head of any size and any duration.
This protocol adds what ``hpcgate.api.connection`` adds to h11:

* a head that keeps arriving past ``http.max_header_bytes`` is answered 431 and the
  connection closed: every read while a head is incomplete is counted, so the
  parser never holds more than the cap plus one read; a head that arrives whole
  in one read is counted again by the edge (``api/edge.py``), as with h11;
* a head not whole within ``http.header_read_timeout_seconds`` of the connection's
  opening or of its first byte is answered 408 (nothing sent at all: the
  connection is just closed).

It also tells the application when the connection is lost, without a task per
request: ``scope["extensions"][DISCONNECT_EXTENSION](callback)`` calls ``callback``
once, from ``connection_lost`` (soon, if the connection is already gone), and
returns a function that stops the watch. Ten thousand open SSE streams and
long-polls use it instead of each reading ``receive`` in a task of its own
(``hpcgate.api.streaming.watch_disconnect``; other servers keep the task).

It relies on uvicorn internals (the parser callbacks); ``tests/security/test_http_edge.py``
pins the behaviour for whichever protocol ``http.protocol`` selects.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Literal, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hpcgate.api.head_limits import HeadLimits
from hpcgate.config import HttpSettings

__all__ = ["DISCONNECT_EXTENSION", "BoundedHttpToolsProtocol", "httptools_protocol_class"]

DISCONNECT_EXTENSION = "hpcgate.disconnect"
"""The ASGI scope extension that calls back when the client's connection is lost."""


class BoundedHttpToolsProtocol(HeadLimits, HttpToolsProtocol):
    """uvicorn's httptools protocol with a size cap and a deadline on each request head."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # between a message's end and the next head's end
        self._head_bytes = 0  # bytes read while the current head is incomplete
        self._head_started = False  # a byte of the current head has been parsed
        self._heads_completed = 0
        self._lost = False
        self._watchers: list[Callable[[], None]] | None = None
        self.pipeline = _Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow._is_writable_event = LeanEvent()
        self.flow._is_writable_event.set()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._lost = True
        watchers, self._watchers = self._watchers, None
        super().connection_lost(exc)  # the request's sends are no-ops from here
        for callback in watchers or ():
            callback()

    def data_received(self, data: bytes) -> None:
        reading_head, completed = self._reading_head, self._heads_completed
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel_head_timer()
            return
        if self._heads_completed != completed:
            # a head ended in this read (the edge counts its headers); a next one
            # may have begun in it: it is counted from the next read on
            self._head_bytes = 0
        elif reading_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._too_large()

    # -- parser callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = self._head_started = True
        if self._head_timer is None:
            self._arm_head_timer()  # the first bytes of a new request on a kept-alive one

    def on_headers_complete(self) -> None:
        self._reading_head = self._head_started = False
        self._heads_completed += 1
        self._cancel_head_timer()
        scope = cast(dict[str, Any], self.scope)
        scope["extensions"] = {DISCONNECT_EXTENSION: self._watch_disconnect}
        cycle = self.cycle
        super().on_headers_complete()
        if self.cycle is not cycle:  # a new request (not an upgrade): none waits on it yet
            self.cycle.message_event = LeanEvent()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    # -- the disconnect extension -------------------------------------------------

    def _watch_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        if self._lost:
            self.loop.call_soon(callback)
            return _nothing
        if self._watchers is None:
            self._watchers = []
        self._watchers.append(callback)
        self.flow.resume_reading()  # as uvicorn's receive(): the client's close is read

        def unwatch() -> None:
            if self._watchers is not None and callback in self._watchers:
                self._watchers.remove(callback)

        return unwatch

    # -- HeadLimits ---------------------------------------------------------------------

    def _head_incomplete(self) -> bool:
        return self._reading_head

    def _head_partial(self) -> bool:
        return self._head_started or self._head_bytes > 0


class LeanEvent(asyncio.Event):
    """``asyncio.Event`` whose deque of waiters (760 B) is made on the first wait.

    uvicorn holds two per open request (the cycle's message event, the flow
    control's writable event) and most are never awaited (a request without a body
    whose disconnect comes by ``DISCONNECT_EXTENSION``)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters = _NO_WAITERS  # type: ignore[assignment]  # set() iterates it

    async def wait(self) -> Literal[True]:
        if cast(object, self._waiters) is _NO_WAITERS:
            self._waiters = collections.deque()
        return await super().wait()


_NO_WAITERS = ()


class _Pipeline:
    """uvicorn's queue of pipelined requests (a 760 B deque per connection), made on
    the first pipelined request: what uvicorn uses of a deque."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: collections.deque[Any] | None = None

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __len__(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def appendleft(self, item: Any) -> None:
        if self._queue is None:
            self._queue = collections.deque()
        self._queue.appendleft(item)

    def pop(self) -> Any:
        if self._queue is None:
            raise IndexError("pop from an empty pipeline")
        return self._queue.pop()


def _nothing() -> None:
    pass


def httptools_protocol_class(settings: HttpSettings) -> type[BoundedHttpToolsProtocol]:
    """``BoundedHttpToolsProtocol`` with the configured head deadline and size."""

    class Configured(BoundedHttpToolsProtocol):
        head_timeout = settings.header_read_timeout_seconds
        max_head_bytes = settings.max_header_bytes

    return Configured
