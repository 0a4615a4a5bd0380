"""head and tail over ranged reads, compared with GNU head and tail."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from hpcgate.errors import PayloadTooLarge
from hpcgate.filesystem import content

SAMPLES = {
    "empty": b"",
    "one-line": b"hello\n",
    "no-final-newline": b"a\nbb\nccc",
    "only-newlines": b"\n\n\n\n",
    "blank-lines": b"x\n\n\ny\n\n",
    "long": b"".join(b"line %d %s\n" % (i, b"z" * (i % 97)) for i in range(20000)),
    "binary": bytes(random.Random(7).randrange(256) for _ in range(150_000)),
}
COUNTS = [0, 1, 2, 3, 10, 11, 999, 10**6]


def reader(data: bytes) -> content.Reader:
    async def read(offset: int, length: int) -> bytes:
        assert offset >= 0 and length >= 0
        return data[offset : offset + length]

    return read


def gnu(tool: str, option: str, value: str, path: Path) -> bytes:
    return subprocess.run(
        [tool, f"{option}{value}", "--", str(path)], check=True, capture_output=True
    ).stdout


@pytest.mark.parametrize("name", SAMPLES)
async def test_matches_gnu(tmp_path: Path, name: str) -> None:
    data = SAMPLES[name]
    path = tmp_path / name
    path.write_bytes(data)
    read, size, limit = reader(data), len(data), 10**9
    for n in COUNTS:
        cases = [
            (content.head, {"lines": n}, "head", "--lines=", f"{n}"),
            (content.head, {"lines": n, "skip_trailing": True}, "head", "--lines=", f"-{n}"),
            (content.head, {"bytes_": n}, "head", "--bytes=", f"{n}"),
            (content.head, {"bytes_": n, "skip_trailing": True}, "head", "--bytes=", f"-{n}"),
            (content.tail, {"lines": n}, "tail", "--lines=", f"{n}"),
            (content.tail, {"lines": n, "skip_heading": True}, "tail", "--lines=", f"+{n}"),
            (content.tail, {"bytes_": n}, "tail", "--bytes=", f"{n}"),
            (content.tail, {"bytes_": n, "skip_heading": True}, "tail", "--bytes=", f"+{n}"),
        ]
        for function, kwargs, tool, option, value in cases:
            ours = await function(read, size, limit=limit, **kwargs)
            assert ours == gnu(tool, option, value, path), (tool, option, value)
    assert await content.head(read, size, limit=limit) == gnu("head", "-n", "10", path)
    assert await content.tail(read, size, limit=limit) == gnu("tail", "-n", "10", path)


async def test_head_reads_only_what_it_needs() -> None:
    data = SAMPLES["long"]
    reads: list[tuple[int, int]] = []

    async def read(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return data[offset : offset + length]

    await content.head(read, len(data), lines=3, limit=10**9)
    assert sum(length for _, length in reads) <= 2 * content.SCAN_CHUNK
    reads.clear()
    await content.tail(read, len(data), lines=3, limit=10**9)
    assert all(offset >= len(data) - 2 * content.SCAN_CHUNK for offset, _ in reads)


async def test_output_over_the_limit_is_413() -> None:
    data = SAMPLES["long"]
    with pytest.raises(PayloadTooLarge):
        await content.head(reader(data), len(data), bytes_=5000, limit=4096)
    with pytest.raises(PayloadTooLarge):
        await content.tail(reader(data), len(data), lines=10**6, limit=4096)
    with pytest.raises(PayloadTooLarge):
        # one enormous line: head -n 1 would return all of it
        await content.head(reader(b"x" * 500_000), 500_000, lines=1, limit=100_000)
