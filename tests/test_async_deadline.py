"""The event-loop deadline of coroutine tests (tests/async_deadline.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.async_deadline import with_deadline


async def _stuck_on_an_event(event: asyncio.Event) -> None:
    await event.wait()


async def test_a_hung_test_is_cancelled_with_the_other_tasks_stacks() -> None:
    never = asyncio.Event()
    bystander = asyncio.create_task(_stuck_on_an_event(never), name="bystander")
    try:
        with pytest.raises(TimeoutError) as raised:
            await with_deadline(_stuck_on_an_event, 0.2)(never)
        message = str(raised.value)
        assert message.startswith("test still running after 0 s")
        assert "_stuck_on_an_event" in message and "bystander" in message
        # the chained cause carries the hung test's own await
        assert isinstance(raised.value.__cause__, TimeoutError)
    finally:
        bystander.cancel()
    # the loop carries on: the deadline cancelled the test's work, nothing else
    assert await with_deadline(asyncio.sleep, 5)(0, "done") == "done"


async def test_a_test_in_time_keeps_its_result_and_errors() -> None:
    async def fails() -> None:
        raise ValueError("its own error")

    with pytest.raises(ValueError, match="its own error"):
        await with_deadline(fails, 5)()
