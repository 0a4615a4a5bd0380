"""The floor of ``clients_bench.py``: a bare asyncio server (uvloop, as ``hpcgate
serve``) that holds every connection as an SSE stream and, on ``GET /fire``, writes
one event (its id the wall-clock millisecond) to all of them in one pass.

    python bench/clients_floor.py PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time


async def floor_server(port: int) -> None:
    """Hold every connection as an SSE stream; ``GET /fire`` writes one event to all
    of them in one pass and closes them."""
    held: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        if head.startswith(b"GET /fire"):
            stamp = int(time.time() * 1000)
            event = f"id: {stamp}\nevent: terminal\ndata: {{}}\n\n".encode()
            for other in held:
                other.write(event)
                other.close()
            held.clear()
            writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            writer.close()
            return
        if head.startswith(b"GET /count"):
            body = str(len(held)).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            writer.close()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\n\r\nretry: 2000\n\nevent: synced\ndata: {}\n\n"
        )
        held.add(writer)
        with contextlib.suppress(OSError):
            await reader.read()  # until the client goes away
        held.discard(writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(floor_server(int(sys.argv[1])))
