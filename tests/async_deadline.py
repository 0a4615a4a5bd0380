"""A deadline inside the event loop for every coroutine test.

pytest-timeout's signal raises wherever the main thread is; in a coroutine test that is
inside the session's event loop, which it leaves with the test's task still pending: every
later test and session fixture on that loop then fails too, and pytest itself can crash
while it formats the traceback. A deadline set just before pytest-timeout's instead
cancels the test's own task, so a hung test fails alone, with the await it was stuck on
and the stacks of the loop's other tasks in its report.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import pytest

# seconds before pytest-timeout's signal at which the test's task is cancelled
MARGIN = 30.0
EXPIRES = pytest.StashKey[float]()


def _other_tasks_stacks() -> str:
    current = asyncio.current_task()
    out = io.StringIO()
    for task in asyncio.all_tasks():
        if task is not current:
            task.print_stack(limit=12, file=out)
    return out.getvalue()


def with_deadline(
    test: Callable[..., Coroutine[Any, Any, Any]], seconds: float
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``test`` cancelled after ``seconds``, failing with where everything was waiting."""

    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(seconds):
                return await test(*args, **kwargs)
        except TimeoutError as error:
            message = f"test still running after {seconds:.0f} s; the loop's other tasks:\n"
            raise TimeoutError(message + _other_tasks_stacks()) from error

    return bounded


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Note when pytest-timeout's signal will come (its settings: marker, option, ini),
    and let pytest-timeout arm it."""
    item.stash[EXPIRES] = time.monotonic() + float(settings.timeout)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Run a coroutine test (pytest-asyncio) under its deadline. Innermost, so that
    pytest-timeout has armed its timer even when it times the call alone."""
    test = getattr(item, "obj", None)
    expires = item.stash.get(EXPIRES, None)
    if expires is None or not inspect.iscoroutinefunction(test):
        return (yield)
    seconds = expires - time.monotonic() - MARGIN
    if seconds <= 0:
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(item, "obj", with_deadline(test, seconds))
        return (yield)
