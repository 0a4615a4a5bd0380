"""Periodic health checks of each system's services, and the gate routes use.

Probes are plain async callables that raise when their service is unhealthy; the
checker runs them concurrently every interval, each under a timeout, and keeps the
last result per service. Routes ask ``ensure_healthy`` before relying on a service,
so a known-broken scheduler answers 503 with the reason instead of hanging.

Callers (``/status/systems``, 503 bodies) see only texts written here or fixed by
the probe (``Probe.failure``), never what a remote command printed: the detail of
a failure goes to the server log at warning level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from hpcgate.errors import ClusterUnreachable, Forbidden, ServiceUnavailable
from hpcgate.wire import WireModel

logger = logging.getLogger(__name__)

ServiceType = Literal["ssh", "scheduler", "filesystem", "exception"]


class ServiceHealth(WireModel):
    """One service's last health check, as FirecREST reports it."""

    service_type: ServiceType
    last_checked: datetime | None = None
    latency: float | None = None
    healthy: bool = False
    message: str | None = None
    path: str | None = None


_DETAIL_CHARS = 500


@dataclass(frozen=True)
class Probe:
    """A named check: ``check()`` returns when healthy and raises otherwise.

    ``failure`` is what callers are told when it raises (the exception's own text,
    which may quote the cluster, is only logged).
    """

    service_type: ServiceType
    check: Callable[[], Awaitable[object]]
    path: str | None = None
    failure: str = "the check failed"


def _public_reason(probe: Probe, exc: Exception) -> str:
    """What callers may read about ``exc``: our own words only."""
    if isinstance(exc, Forbidden):
        return "the system refused the service identity's SSH login"
    if isinstance(exc, ClusterUnreachable) and probe.service_type != "ssh":
        return "the system cannot be reached over SSH"
    return probe.failure


class HealthChecker:
    """Runs every system's probes periodically and remembers the results."""

    def __init__(self, probes: dict[str, list[Probe]], *, interval: float, timeout: float) -> None:
        self._probes = probes
        self._interval = interval
        self._timeout = timeout
        self._results: dict[str, list[ServiceHealth]] = {}
        self._last_run: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None

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
        return ServiceHealth(
            service_type=probe.service_type,
            last_checked=datetime.now(UTC),
            latency=round(time.perf_counter() - started, 6),
            healthy=healthy,
            message=message,
            path=probe.path,
        )

    async def check_now(self) -> None:
        """Run every probe of every system once, concurrently."""

        async def check_system(system: str, probes: list[Probe]) -> None:
            results = await asyncio.gather(*(self._run_probe(system, p) for p in probes))
            for result in results:
                if not result.healthy:
                    logger.warning(
                        "health check failed",
                        extra={
                            "system": system,
                            "service": result.service_type,
                            "reason": result.message,
                        },
                    )
            self._results[system] = list(results)
            self._last_run[system] = datetime.now(UTC)

        await asyncio.gather(*(check_system(s, p) for s, p in self._probes.items()))

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_now()
            except Exception:
                logger.exception("health checker round failed")
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="health-checker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def health(self, system: str) -> list[ServiceHealth] | None:
        """The last results for ``system``, or None before the first round."""
        return self._results.get(system)

    def last_run(self, system: str) -> datetime | None:
        return self._last_run.get(system)

    @property
    def runs(self) -> dict[str, datetime]:
        return dict(self._last_run)

    def ensure_healthy(self, system: str, service_type: ServiceType) -> None:
        """Raise 503 if the last check found ``service_type`` on ``system`` unhealthy."""
        for result in self._results.get(system, []):
            if result.service_type == service_type and not result.healthy:
                where = f" ({result.path})" if result.path else ""
                raise ServiceUnavailable(
                    f"The {service_type} service of system '{system}'{where} is unhealthy: "
                    f"{result.message}",
                    retry_after=max(1, int(self._interval)),
                )
