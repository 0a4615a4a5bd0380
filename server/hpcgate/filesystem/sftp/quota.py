"""How many streamed transfers one user holds open at once (each pins SFTP blocks)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hpcgate.errors import TooManyRequests

SETTING = "filesystem_limits.max_streams_per_user"


class StreamQuota:
    """Per user, the streamed reads and writes open now, at most ``cap`` of them.

    A stream keeps up to a window of SFTP blocks in memory (``pipeline``) for as long
    as its connection lives, however slowly the client reads or sends; without a cap
    one user's idle streams would hold unbounded memory. Over the cap: 429 before
    anything is opened; other users keep their own count. Only users with a stream
    open are kept, so the table is bounded by the open streams themselves.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def held(self, username: str) -> int:
        """The streams ``username`` holds now."""
        return self._open.get(username, 0)

    @contextmanager
    def hold(self, username: str) -> Iterator[None]:
        """One of ``username``'s slots for the block, given back however it ends."""
        count = self._open.get(username, 0)
        if count >= self.cap:
            raise TooManyRequests(
                f"Too many streamed transfers open at once ({SETTING} is {self.cap}); "
                "finish or close one and retry"
            )
        self._open[username] = count + 1
        try:
            yield
        finally:
            left = self._open[username] - 1
            if left:
                self._open[username] = left
            else:
                del self._open[username]
