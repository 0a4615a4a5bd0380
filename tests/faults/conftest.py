"""The fault drills' server: ``tests.faults`` served against the private site.

One server per module (its own state directory, so its idempotency store and
metrics are the drills' alone), with the production defaults for health and the
job watcher: the drills measure what an operator would get. Before each drill the
private site is brought back up (``up`` restarts a partial site as a whole) and the
server is started again if a drill killed it; the figures of every drill are
printed at the end of the session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.faults.drill import REPORT, RESULTS
from tests.private_site import PrivateServer, PrivateSite, start_private_server

FAULTS = "tests.faults"


@pytest.fixture(scope="module")
def drill_server(
    private_site: PrivateSite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateServer]:
    server = start_private_server(
        private_site.env, tmp_path_factory.mktemp("drills"), launcher=FAULTS
    )
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture
def drill_ready(private_site: PrivateSite, drill_server: PrivateServer) -> PrivateServer:
    """The private site fully up and the drill server answering a filesystem and a
    compute route (as after a quiet period) before a drill starts."""
    if not all(private_site.running().values()):
        private_site.ensure_up()
    if drill_server.process.poll() is not None:
        drill_server.restart()
    deadline = time.monotonic() + 60
    scratch = private_site.env.scratch("hpcuser1")
    with drill_server.client() as client:
        while True:
            fs = client.get(f"/filesystem/{drill_server.system}/ops/ls", params={"path": scratch})
            jobs = client.get(f"/compute/{drill_server.system}/jobs")
            if fs.status_code == 200 and jobs.status_code == 200:
                return drill_server
            assert time.monotonic() < deadline, f"not ready: {fs.text} {jobs.text}"
            time.sleep(0.5)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.section("fault drills")
        for figures in RESULTS:
            terminalreporter.write_line(json.dumps(figures))
        terminalreporter.write_line(f"(also appended to {REPORT})")
