"""A failing accounting probe degrades its system and refuses nothing (the real-site
test is ``tests/events/test_accounting_site.py``)."""

from __future__ import annotations

import pytest

from hpcgate.errors import ServiceUnavailable
from hpcgate.operations.health import HealthChecker, Probe


async def test_a_non_critical_probe_degrades_and_gates_no_route() -> None:
    async def fine() -> None:
        return None

    async def down() -> None:
        raise ServiceUnavailable("The Slurm accounting daemon (slurmdbd) is not reachable")

    checker = HealthChecker(
        {
            "sys": [
                Probe("scheduler", fine),
                Probe("accounting", down, failure="slurmdbd did not answer", critical=False),
                Probe("filesystem", fine, path="/fs"),
            ]
        },
        interval=30,
        timeout=5,
        retry=1,
    )
    await checker.check_now()
    health = {h.service_type: h for h in checker.health("sys") or []}
    assert (health["accounting"].healthy, health["accounting"].status) == (False, "degraded")
    assert health["accounting"].message == "slurmdbd did not answer"
    assert [health[s].status for s in ("scheduler", "filesystem")] == ["healthy", "healthy"]
    for service in ("scheduler", "filesystem", "ssh", "accounting"):
        checker.ensure_healthy("sys", service)  # nothing refused


async def test_a_failing_critical_probe_is_unhealthy() -> None:
    async def down() -> None:
        raise RuntimeError("no")

    checker = HealthChecker({"sys": [Probe("scheduler", down)]}, interval=30, timeout=5)
    await checker.check_now()
    [health] = checker.health("sys") or []
    assert (health.healthy, health.status) == (False, "unhealthy")
    with pytest.raises(ServiceUnavailable):
        checker.ensure_healthy("sys", "scheduler")
