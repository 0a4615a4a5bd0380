"""What both bounded HTTP/1.1 protocols share (``connection`` for h11,
``connection_httptools`` for httptools): the deadline on a request head and the
early answers written straight to the socket.

Each protocol says, from its own parser's state, whether a head is being read
(``_head_incomplete``) and whether part of one has arrived (``_head_partial``).
"""

from __future__ import annotations

import asyncio
import json


class HeadLimits:
    """Mixin before uvicorn's protocol class: a head not whole within
    ``head_timeout`` seconds is answered 408 (or the connection just closed if nothing
    of it arrived); ``_too_large`` answers 431 for a head over ``max_head_bytes``."""

    head_timeout: float = 10.0
    max_head_bytes: int = 64 * 1024
    _head_timer: asyncio.TimerHandle | None = None

    # provided by uvicorn's protocol classes
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def _head_incomplete(self) -> bool:
        raise NotImplementedError

    def _head_partial(self) -> bool:
        raise NotImplementedError

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._head_incomplete():
            return
        if self._head_partial():
            self._reply_and_close(
                408,
                "Request Timeout",
                f"The request head took longer than {self.head_timeout:g} s "
                "(http.header_read_timeout_seconds)",
            )
        else:
            self.transport.close()  # nothing sent at all: nobody to answer

    def _too_large(self) -> None:
        self._reply_and_close(
            431,
            "Request Header Fields Too Large",
            f"The request head exceeds {self.max_head_bytes} bytes (http.max_header_bytes)",
        )

    def _reply_and_close(self, status: int, reason: str, message: str) -> None:
        """A FirecREST error body written straight to the socket, then close."""
        body = json.dumps({"errorType": "error", "message": message}).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        self._cancel_head_timer()
        self.transport.write(head + body)
        self.transport.close()
