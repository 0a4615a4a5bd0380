"""uvicorn's httptools protocol with the bounds of ``BoundedH11Protocol``.

httptools (llhttp, in C) parses a request for about a third of the CPU of h11
(bench/README.md), but it accepts a request head of any size and any duration.
This protocol adds what ``hpcgate.api.connection`` adds to h11:

* a head that keeps arriving past ``http.max_header_bytes`` is answered 431 and the
  connection closed: every read while a head is incomplete is counted, so the
  parser never holds more than the cap plus one read; a head that arrives whole
  in one read is counted again by the edge middleware, as with h11;
* a head not whole within ``http.header_read_timeout_seconds`` of the connection's
  opening or of its first byte is answered 408 (nothing sent at all: the
  connection is just closed).

It relies on uvicorn internals (the parser callbacks); ``tests/security/test_http_edge.py``
pins the behaviour for whichever protocol ``http.protocol`` selects.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hpcgate.api.head_limits import HeadLimits
from hpcgate.config import HttpSettings

__all__ = ["BoundedHttpToolsProtocol", "httptools_protocol_class"]


class BoundedHttpToolsProtocol(HeadLimits, HttpToolsProtocol):
    """uvicorn's httptools protocol with a size cap and a deadline on each request head."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # between a message's end and the next head's end
        self._head_bytes = 0  # bytes read while the current head is incomplete
        self._head_started = False  # a byte of the current head has been parsed
        self._heads_completed = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

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
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    # -- HeadLimits ---------------------------------------------------------------------

    def _head_incomplete(self) -> bool:
        return self._reading_head

    def _head_partial(self) -> bool:
        return self._head_started or self._head_bytes > 0


def httptools_protocol_class(settings: HttpSettings) -> type[BoundedHttpToolsProtocol]:
    """``BoundedHttpToolsProtocol`` with the configured head deadline and size."""

    class Configured(BoundedHttpToolsProtocol):
        head_timeout = settings.header_read_timeout_seconds
        max_head_bytes = settings.max_header_bytes

    return Configured
