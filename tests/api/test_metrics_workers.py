"""``/metrics`` with two real workers: the scrape-time figures are right whichever
worker answers.

Event streams are opened on connections pinned to each worker (``ss`` names the
process holding each one, see ``test_workers``). Every worker's scrape must show
their total, the SSH connections every worker holds, one watcher interval (the
leader's, not a sum), and after a worker is killed, only the survivors' part.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.api.test_workers import (
    WATCHER,
    Workers,
    call,
    established,
    owner,
    serve,
    write_config,
)
from tests.events.helpers import metric_values
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

SETTLE = 10.0  # seconds: several publishing periods (PUBLISH_SECONDS) on a busy machine


@pytest.fixture(scope="module")
def served(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    workdir = tmp_path_factory.mktemp("metrics-workers")
    server = serve(write_config(site_env, workdir, {}), workdir, 2)
    yield server
    server.stop()


def connect_to(server: Workers, pid: int) -> http.client.HTTPConnection:
    """A new connection that the kernel gave to worker ``pid``."""
    for _ in range(64):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.connect()
        if owner(connection, server.port) == pid:
            return connection
        connection.close()
    raise AssertionError(f"no connection reached worker {pid}")


def open_stream(server: Workers, pid: int) -> http.client.HTTPConnection:
    """An event stream of all of hpcuser1's jobs, held by worker ``pid``."""
    connection = connect_to(server, pid)
    connection.request("GET", f"/compute/{server.system}/events", headers=server.headers())
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    return connection


def scrape(server: Workers, pid: int) -> str:
    connection = connect_to(server, pid)
    try:
        status, _, body = call(connection, "GET", "/metrics", {})
    finally:
        connection.close()
    assert status == 200
    return body.decode()


def settled(server: Workers, pids: set[int], check: Callable[[str], bool]) -> dict[int, str]:
    """Each worker's scrape once ``check`` holds for every one (at most ``SETTLE`` s)."""
    deadline = time.monotonic() + SETTLE
    while True:
        texts = {pid: scrape(server, pid) for pid in pids}
        if all(check(text) for text in texts.values()) or time.monotonic() > deadline:
            return texts
        time.sleep(0.3)


def subscribers(text: str, system: str) -> float:
    return metric_values(text, "hpcgate_sse_subscribers", system=system)


def ssh_held(server: Workers, ssh_port: int) -> int:
    """SSH connections the workers hold, counted by the kernel."""
    workers = server.worker_pids()
    return sum(
        1
        for line in established(f"dport = :{ssh_port}")
        if {int(p) for p in re.findall(r"pid=(\d+)", line)} & workers
    )


def leader_samples(text: str, name: str) -> list[float]:
    return [
        float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name + "{")
    ]


def test_figures_are_every_workers(served: Workers, site_env: SiteEnv) -> None:
    first, second = sorted(served.worker_pids())
    system, ssh_port = served.system, site_env.ssh_port
    streams = [open_stream(served, first), open_stream(served, second), open_stream(served, second)]
    try:
        texts = settled(served, {first, second}, lambda t: subscribers(t, system) == 3)
        assert {pid: subscribers(t, system) for pid, t in texts.items()} == {
            first: 3,
            second: 3,
        }
        for text in texts.values():
            # the leader's interval, one sample, not the sum of two workers'
            intervals = leader_samples(text, "hpcgate_watcher_interval_seconds")
            assert len(intervals) == 1, intervals
            assert WATCHER["min_interval"] <= intervals[0] <= WATCHER["max_interval"]
        # the SSH connections of both workers, as the kernel counts them
        texts = settled(
            served,
            {first, second},
            lambda t: metric_values(t, "hpcgate_ssh_connections") == ssh_held(served, ssh_port),
        )
        for text in texts.values():
            assert metric_values(text, "hpcgate_ssh_connections") == ssh_held(served, ssh_port)
    finally:
        for stream in streams:
            stream.close()
    texts = settled(served, {first, second}, lambda t: subscribers(t, system) == 0)
    assert [subscribers(t, system) for t in texts.values()] == [0, 0]


def test_a_killed_workers_figures_go(served: Workers) -> None:
    first, second = sorted(served.worker_pids())
    system = served.system
    kept = open_stream(served, first)
    doomed = [open_stream(served, second), open_stream(served, second)]
    try:
        texts = settled(served, {first}, lambda t: subscribers(t, system) == 3)
        assert subscribers(texts[first], system) == 3
        os.kill(second, signal.SIGKILL)
        texts = settled(served, {first}, lambda t: subscribers(t, system) == 1)
        assert subscribers(texts[first], system) == 1
        metrics_dir = Path(served.log_path).parent / "state" / "metrics"
        assert not list(metrics_dir.glob(f"gauge_live*_{second}.db"))
        # serve starts another worker in the killed one's place: its part starts at 0
        deadline = time.monotonic() + 60
        while len(served.worker_pids() - {second}) < 2:
            assert time.monotonic() < deadline, served.log_path.read_text()
            time.sleep(0.2)
        (replacement,) = served.worker_pids() - {first, second}
        deadline = time.monotonic() + 60
        while served.log_path.read_text().count("Application startup complete") < 3:
            assert time.monotonic() < deadline, served.log_path.read_text()
            time.sleep(0.2)
        texts = settled(served, {first, replacement}, lambda t: subscribers(t, system) == 1)
        assert [subscribers(t, system) for t in texts.values()] == [1, 1]
        # one of the two leads the rounds (the killed one's lease lapses): one interval
        texts = settled(
            served,
            {first, replacement},
            lambda t: len(leader_samples(t, "hpcgate_watcher_interval_seconds")) == 1,
        )
        for text in texts.values():
            assert len(leader_samples(text, "hpcgate_watcher_interval_seconds")) == 1
    finally:
        kept.close()
        for stream in doomed:
            stream.close()
    texts = settled(served, served.worker_pids(), lambda t: subscribers(t, system) == 0)
    assert [subscribers(t, system) for t in texts.values()] == [0, 0]
