"""The SSH connections' coalesced writes: alone against a recording transport, then
through the pool against the real sshd (every other site test runs over them too)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from hpcgate.cluster import coalescing
from hpcgate.cluster.coalescing import FLUSH_BYTES, CoalescingTransport
from hpcgate.cluster.sshpool import SshPool
from tests.site import SiteEnv
from tests.test_sshpool import NAME, system_for


class Recording(asyncio.Transport):
    """What reached the socket, one entry per ``writelines``."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[list[bytes]] = []
        self.closed = self.aborted = self.eof = False

    def writelines(self, list_of_data: Any) -> None:
        assert not self.closed
        self.sent.append([bytes(data) for data in list_of_data])

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 7


async def test_writes_of_one_pass_leave_together_in_order() -> None:
    inner = Recording()
    transport = CoalescingTransport(inner)
    transport.write(b"ignore-1")
    transport.write(b"packet-1")
    transport.writelines([b"ignore-2", memoryview(b"packet-2")])
    assert inner.sent == []  # nothing before the pass ends
    assert transport.get_write_buffer_size() == 7 + 32
    await asyncio.sleep(0)
    assert inner.sent == [[b"ignore-1", b"packet-1", b"ignore-2", b"packet-2"]]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert inner.sent[1:] == [[b"next"]]
    await asyncio.sleep(0)
    assert len(inner.sent) == 2  # no empty writes


async def test_a_large_write_is_not_held_back() -> None:
    inner = Recording()
    transport = CoalescingTransport(inner)
    transport.write(b"h")
    transport.write(b"x" * FLUSH_BYTES)
    assert inner.sent == [[b"h", b"x" * FLUSH_BYTES]]
    await asyncio.sleep(0)
    assert len(inner.sent) == 1


async def test_close_sends_what_was_written_abort_drops_it() -> None:
    inner = Recording()
    transport = CoalescingTransport(inner)
    transport.write(b"last words")
    transport.close()
    assert inner.sent == [[b"last words"]] and inner.closed
    transport.write(b"after close")  # dropped, as by a closed socket transport
    await asyncio.sleep(0)
    assert inner.sent == [[b"last words"]]

    inner = Recording()
    transport = CoalescingTransport(inner)
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.sent == [] and inner.aborted

    inner = Recording()
    transport = CoalescingTransport(inner)
    transport.write(b"before eof")
    transport.write_eof()
    assert inner.sent == [[b"before eof"]] and inner.eof


@pytest.mark.site
@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_the_pools_connections_gather_their_packets(
    site_env: SiteEnv, monkeypatch: pytest.MonkeyPatch, loop_factory: Callable[[], Any]
) -> None:
    """Fifty SFTP requests at once (each an SSH_MSG_IGNORE and a packet from asyncssh)
    reach sshd in a few writes, and every answer is right; on asyncio's loop and on
    uvloop's, which the server runs (its transports are not asyncio.Transport)."""
    flushes: list[int] = []
    flush = CoalescingTransport.flush

    def counted(self: CoalescingTransport) -> None:
        if self._gathered:
            flushes.append(len(self._gathered))
        flush(self)

    async def scenario() -> None:
        pool = SshPool([system_for(site_env)])
        await pool.start()
        try:
            async with pool.sftp(NAME, "hpcuser1") as sftp:
                home = site_env.home("hpcuser1")
                monkeypatch.setattr(coalescing.CoalescingTransport, "flush", counted)
                attrs = await asyncio.gather(*(sftp.lstat(home) for _ in range(50)))
                monkeypatch.undo()
            assert all(attr.uid == attrs[0].uid and attr.permissions for attr in attrs)
            assert sum(flushes) >= 100  # every packet went through, each after its IGNORE
            assert len(flushes) <= 10, flushes
            # and the connection goes on working after the patch is gone
            answer = await pool.runner(NAME, "hpcuser1").run(["id", "-un"])
            assert answer.stdout == "hpcuser1\n"
        finally:
            await pool.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(scenario())
