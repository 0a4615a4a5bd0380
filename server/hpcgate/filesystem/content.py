"""head and tail over ranged reads, with GNU coreutils' semantics.

Each function takes ``read(offset, length) -> bytes`` (short only at end of file),
the file's size, and a ``limit`` on the bytes it may return or scan forward for
lines; over the limit it raises ``PayloadTooLarge``. Only the bytes needed are
read: the start of the file for head, the end (backwards) for tail.

* ``head(bytes=N)`` the first N bytes; ``skip_trailing``: all but the last N bytes.
* ``head(lines=N)`` the first N lines; ``skip_trailing``: all but the last N lines.
* ``tail(bytes=N)`` the last N bytes; ``skip_heading``: from byte N on (1-based,
  like ``tail -c +N``).
* ``tail(lines=N)`` the last N lines; ``skip_heading``: from line N on (``tail -n +N``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hpcgate.errors import PayloadTooLarge

Reader = Callable[[int, int], Awaitable[bytes]]

SCAN_CHUNK = 64 * 1024


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The output would exceed {limit} bytes; ask for fewer bytes or lines, or use ops/download"
    )


async def _read_range(read: Reader, start: int, end: int, limit: int) -> bytes:
    if end - start > limit:
        raise _too_large(limit)
    if end <= start:
        return b""
    return await read(start, end - start)


async def _offset_after_lines(read: Reader, size: int, lines: int, scan_limit: int | None) -> int:
    """Offset just after the first ``lines`` lines (``size`` if the file has fewer).

    With ``scan_limit``, ``PayloadTooLarge`` once more than that many bytes were
    scanned (for head, whose output is what was scanned).
    """
    if lines <= 0:
        return 0
    offset = 0
    seen = 0
    while offset < size:
        if scan_limit is not None and offset > scan_limit:
            raise _too_large(scan_limit)
        chunk = await read(offset, min(SCAN_CHUNK, size - offset))
        if not chunk:
            break
        start = 0
        while True:
            found = chunk.find(b"\n", start)
            if found < 0:
                break
            seen += 1
            if seen == lines:
                return offset + found + 1
            start = found + 1
        offset += len(chunk)
    return size


async def _offset_of_last_lines(read: Reader, size: int, lines: int) -> int:
    """Offset where the last ``lines`` lines start (0 if the file has no more)."""
    if lines <= 0:
        return size
    end = size
    # a newline that ends the file terminates the last line; it separates nothing
    if size and await read(size - 1, 1) == b"\n":
        end = size - 1
    seen = 0
    while end > 0:
        start = max(0, end - SCAN_CHUNK)
        chunk = await read(start, end - start)
        position = len(chunk)
        while True:
            found = chunk.rfind(b"\n", 0, position)
            if found < 0:
                break
            seen += 1
            if seen == lines:
                return start + found + 1
            position = found
        end = start
    return 0


async def head(
    read: Reader,
    size: int,
    *,
    bytes_: int | None = None,
    lines: int | None = None,
    skip_trailing: bool = False,
    limit: int,
) -> bytes:
    """The start of the file (the first 10 lines unless told otherwise)."""
    if bytes_ is not None:
        end = max(0, size - bytes_) if skip_trailing else min(size, bytes_)
        return await _read_range(read, 0, end, limit)
    count = 10 if lines is None else lines
    if skip_trailing:
        end = await _offset_of_last_lines(read, size, count)
    else:
        end = await _offset_after_lines(read, size, count, limit)
    return await _read_range(read, 0, end, limit)


async def tail(
    read: Reader,
    size: int,
    *,
    bytes_: int | None = None,
    lines: int | None = None,
    skip_heading: bool = False,
    limit: int,
) -> bytes:
    """The end of the file (the last 10 lines unless told otherwise)."""
    if bytes_ is not None:
        start = min(size, max(0, bytes_ - 1)) if skip_heading else max(0, size - bytes_)
        return await _read_range(read, start, size, limit)
    count = 10 if lines is None else lines
    if skip_heading:
        start = await _offset_after_lines(read, size, max(0, count - 1), None)
    else:
        start = await _offset_of_last_lines(read, size, count)
    return await _read_range(read, start, size, limit)
