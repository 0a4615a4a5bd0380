"""``transfer.batching``: bodies regrouped into exact-size batches, bytes unchanged."""

from __future__ import annotations

import os

from hpcgate.transfer.batching import BATCH, batches
from tests.streams import chunked


async def test_batches_are_exact_and_keep_every_byte() -> None:
    data = os.urandom(5 * BATCH + 777)
    for sizes in ([1, 65536, 262144, 3], [BATCH + 1], [3 * BATCH], [262144]):
        got = [batch async for batch in batches(chunked(data, sizes))]
        assert b"".join(got) == data
        assert [len(batch) for batch in got] == [BATCH] * 5 + [777]
        assert all(type(batch) is bytes for batch in got)


async def test_a_chunk_of_exactly_one_batch_is_passed_on_as_it_is() -> None:
    chunk = os.urandom(BATCH)
    got = [batch async for batch in batches(chunked(chunk, [BATCH]))]
    assert len(got) == 1 and got[0] is chunk


async def test_an_empty_body_gives_no_batch() -> None:
    assert [batch async for batch in batches(chunked(b"", [1]))] == []
