"""The HTTP/1.1 connection protocol ``hpcgate serve`` runs: uvicorn's h11 one, bounded.

Measured on uvicorn 0.54 (see ``docs/security.md``): its default protocol
(httptools) accepts a request head of any size, and a million header lines cost
the server ~130 MB that it keeps. The h11 protocol refuses a head that does not fit
in ``h11_max_incomplete_event_size`` (``http.max_header_bytes``); heads that arrive
whole in one read are counted again by the edge (``api/edge.py``). Small requests are
as fast with h11; large bodies stream at ~520 MB/s instead of ~800 MB/s, above what
SFTP to the cluster moves.

Neither protocol limits the time a client takes to send its head: a connection
that sends nothing, or trickles a header byte now and then, is held forever
(slowloris). This protocol closes a connection whose request head is not whole
within ``http.header_read_timeout_seconds`` of the connection's opening or of the
head's first byte, answering 408 if part of a head had arrived. The head over the
size cap is answered 431 instead of uvicorn's 400.

It overrides uvicorn internals (``send_400_response``); the tests in
``tests/security/test_http_edge.py`` pin the behaviour.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from hpcgate.api.head_limits import HeadLimits
from hpcgate.config import HttpSettings

__all__ = ["BoundedH11Protocol", "protocol_class"]


class BoundedH11Protocol(HeadLimits, H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head and a 431."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()  # the head is whole (or the connection is over)
        elif self._head_timer is None:
            self._arm_head_timer()  # the first bytes of a new request on a kept-alive one

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) > self.max_head_bytes:
            self._too_large()
        else:
            super().send_400_response(msg)

    def _head_incomplete(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _head_partial(self) -> bool:
        return bool(self.conn.trailing_data[0])


def protocol_class(settings: HttpSettings) -> type[BoundedH11Protocol]:
    """``BoundedH11Protocol`` with the configured head deadline and size."""

    class Configured(BoundedH11Protocol):
        head_timeout = settings.header_read_timeout_seconds
        max_head_bytes = settings.max_header_bytes

    return Configured
