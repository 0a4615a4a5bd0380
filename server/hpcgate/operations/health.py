"""Periodic health checks of each system's services, and the gate routes use.

Probes are plain async callables that raise when their service is unhealthy; the
checker runs each under a timeout, every interval while it passes and again within
seconds after it fails (see ``HealthChecker``), and keeps the last result per service.
Routes ask ``ensure_healthy`` before relying on a service, so a known-broken
scheduler answers 503 with the reason instead of hanging. A probe that is not
``critical`` (accounting: slurmdbd) gates no route: while it fails its service is
shown ``degraded`` and everything keeps answering (job lookups from the controller).

Callers (``/status/systems``, 503 bodies) see only texts written here or fixed by
the probe (``Probe.failure``), never what a remote command printed: the detail of
a failure goes to the server log at warning level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from hpcgate.errors import ClusterUnreachable, Forbidden, ServiceUnavailable
from hpcgate.wire import WireModel

logger = logging.getLogger(__name__)

ServiceType = Literal["ssh", "scheduler", "accounting", "filesystem", "exception"]
HealthStatus = Literal["healthy", "degraded", "unhealthy"]


class ServiceHealth(WireModel):
    """One service's last health check, as FirecREST reports it."""

    service_type: ServiceType
    last_checked: datetime | None = None
    latency: float | None = None
    healthy: bool = False
    status: HealthStatus = "unhealthy"
    """Beyond FirecREST: ``degraded`` when a failing service gates no route."""
    message: str | None = None
    path: str | None = None


_DETAIL_CHARS = 500


@dataclass(frozen=True)
class Probe:
    """A named check: ``check()`` returns when healthy and raises otherwise.

    ``failure`` is what callers are told when it raises (the exception's own text,
    which may quote the cluster, is only logged). A probe that is not ``critical``
    only degrades its system while it fails: ``ensure_healthy`` never refuses for it.
    """

    service_type: ServiceType
    check: Callable[[], Awaitable[object]]
    path: str | None = None
    failure: str = "the check failed"
    critical: bool = True


def _public_reason(probe: Probe, exc: Exception) -> str:
    """What callers may read about ``exc``: our own words only."""
    if isinstance(exc, Forbidden):
        return "the system refused the service identity's SSH login"
    if isinstance(exc, ClusterUnreachable) and probe.service_type != "ssh":
        return "the system cannot be reached over SSH"
    return probe.failure


@dataclass
class _Slot:
    """One probe's schedule: its last result, when it runs next, its running check."""

    system: str
    probe: Probe
    result: ServiceHealth | None = None
    failures: int = 0  # consecutive
    finished: float = float("-inf")  # monotonic time the last check ended
    due: float = 0.0  # monotonic time of the next check
    task: asyncio.Task[None] | None = None


class HealthChecker:
    """Runs every system's probes and remembers the results.

    A healthy service is checked every ``interval`` seconds. After a failed check it
    is checked again soon: ``retry`` seconds later, then twice as long after each
    further failure, capped at ``interval``. A request refused because a service is
    unhealthy also brings its next check forward (to no sooner than ``retry`` seconds
    after the last one ended): one check per service in flight at a time, shared by
    every caller, never one per request. A refusal's ``Retry-After`` is the number of
    seconds until that next check.
    """

    def __init__(
        self,
        probes: dict[str, list[Probe]],
        *,
        interval: float,
        timeout: float,
        retry: float | None = None,
    ) -> None:
        self._interval = interval
        self._timeout = timeout
        self._retry = min(retry if retry is not None else interval, interval)
        self._slots: dict[str, list[_Slot]] = {
            system: [_Slot(system, probe) for probe in system_probes]
            for system, system_probes in probes.items()
        }
        self._last_run: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    async def _run_probe(self, system: str, probe: Probe) -> ServiceHealth:
        started = time.perf_counter()
        healthy, message = True, None
        try:
            async with asyncio.timeout(self._timeout):
                await probe.check()
        except TimeoutError:
            healthy, message = False, f"no answer within {self._timeout:g} s"
        except Exception as exc:
            healthy, message = False, _public_reason(probe, exc)
            logger.warning(
                "health probe failed: system=%s service=%s%s: %s: %s",
                system,
                probe.service_type,
                f" path={probe.path}" if probe.path else "",
                type(exc).__name__,
                str(exc)[:_DETAIL_CHARS],
            )
        status: HealthStatus = "healthy" if healthy else "unhealthy"
        if not healthy and not probe.critical:
            status = "degraded"
        return ServiceHealth(
            service_type=probe.service_type,
            last_checked=datetime.now(UTC),
            latency=round(time.perf_counter() - started, 6),
            healthy=healthy,
            status=status,
            message=message,
            path=probe.path,
        )

    def _backoff(self, failures: int) -> float:
        """Seconds from a check to the next one after ``failures`` failures in a row."""
        if failures == 0:
            return self._interval
        return min(self._retry * 2.0 ** min(failures - 1, 30), self._interval)

    async def _check(self, slot: _Slot) -> None:
        result = await self._run_probe(slot.system, slot.probe)
        if not result.healthy:
            logger.warning(
                "health check failed",
                extra={
                    "system": slot.system,
                    "service": result.service_type,
                    "reason": result.message,
                },
            )
        slot.failures = 0 if result.healthy else slot.failures + 1
        slot.result = result
        slot.finished = time.monotonic()
        slot.due = slot.finished + self._backoff(slot.failures)
        assert result.last_checked is not None
        self._last_run[slot.system] = result.last_checked

    def _start(self, slot: _Slot) -> asyncio.Task[None]:
        """The slot's running check, started if none is (one in flight per probe)."""
        if slot.task is None or slot.task.done():
            slot.task = asyncio.create_task(
                self._check(slot), name=f"health-{slot.system}-{slot.probe.service_type}"
            )
            slot.task.add_done_callback(self._done)
        return slot.task

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("health check crashed", exc_info=task.exception())
        self._wake.set()

    async def check_now(self) -> None:
        """Run every probe of every system once, concurrently (joining running ones)."""
        tasks = [self._start(slot) for slots in self._slots.values() for slot in slots]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            wait = self._interval
            for slots in self._slots.values():
                for slot in slots:
                    if slot.task is not None and not slot.task.done():
                        continue  # its end sets _wake
                    if slot.due <= now:
                        self._start(slot)
                    else:
                        wait = min(wait, slot.due - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def start(self) -> None:
        if self._task is None:
            self._loop_ref = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._loop(), name="health-checker")

    async def stop(self) -> None:
        tasks = [self._task] if self._task is not None else []
        tasks += [s.task for slots in self._slots.values() for s in slots if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    def health(self, system: str) -> list[ServiceHealth] | None:
        """The last results for ``system``, or None before the first round."""
        results = [s.result for s in self._slots.get(system, []) if s.result is not None]
        return results or None

    def last_run(self, system: str) -> datetime | None:
        return self._last_run.get(system)

    @property
    def runs(self) -> dict[str, datetime]:
        return dict(self._last_run)

    def _demand(self, slot: _Slot) -> float:
        """Bring ``slot``'s next check forward; the seconds until it (at least 1).

        Safe from any thread: the schedule changes on the event loop.
        """
        now = time.monotonic()
        if slot.task is not None and not slot.task.done():
            return 1
        due = min(slot.due, max(now, slot.finished + self._retry))
        if due < slot.due and self._loop_ref is not None and not self._loop_ref.is_closed():
            self._loop_ref.call_soon_threadsafe(self._bring_forward, slot, due)
        return max(1, math.ceil(due - now))

    def _bring_forward(self, slot: _Slot, due: float) -> None:
        if due < slot.due:
            slot.due = due
            self._wake.set()

    def ensure_healthy(self, system: str, service_type: ServiceType) -> None:
        """Raise 503 if the last check found ``service_type`` on ``system`` unhealthy.

        Only that service counts (a filesystem route is not refused because the
        scheduler is down), and only its critical probes (a degraded service refuses
        nothing). ``Retry-After`` is the seconds until the service's next check, which
        the refusal itself brings forward.
        """
        failing = [
            s
            for s in self._slots.get(system, [])
            if s.probe.service_type == service_type
            and s.probe.critical
            and s.result is not None
            and not s.result.healthy
        ]
        if not failing:
            return
        retry_after = max(self._demand(slot) for slot in failing)
        result = failing[0].result
        assert result is not None
        where = f" ({result.path})" if result.path else ""
        raise ServiceUnavailable(
            f"The {service_type} service of system '{system}'{where} is unhealthy: "
            f"{result.message}",
            retry_after=int(retry_after),
        )
