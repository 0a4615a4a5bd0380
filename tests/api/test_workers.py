"""``hpcgate serve --workers N``: real worker processes on the local site.

Two workers share one port (SO_REUSEPORT) and their state: through the state
directory alone (SQLite files, the default) or through a real redis-server; every
test runs with both. Connections are pinned to a worker (``ss`` names the process
that holds each one), so the tests can speak to each worker on purpose: both serve,
an Idempotency-Key sent to both at once makes one job, ``/metrics`` from either
counts both, and while a job is watched from both, the two together run one watcher
round per interval.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcgate.auth.localauth import LocalIssuer, create_signing_key
from hpcgate.cli import local_site_config
from tests.events.conftest import redis_url  # noqa: F401 - the session's redis-server (redis runs)
from tests.events.helpers import commands, metric_values
from tests.server import free_port
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

MIN_INTERVAL = 1.0
WINDOW = 4.0
WATCHER = {"min_interval": MIN_INTERVAL, "max_interval": 5.0, "heartbeat_seconds": 1.0}


@dataclass
class Workers:
    """A running ``hpcgate serve --workers N``."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    issuer: LocalIssuer
    system: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.mint('hpcuser1')}"}

    def worker_pids(self) -> set[int]:
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {
            int(child)
            for child in children
            if "resource_tracker" not in Path(f"/proc/{child}/cmdline").read_text()
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def write_config(site_env: SiteEnv, workdir: Path, extra: dict[str, Any]) -> Path:
    config = local_site_config(site_env.values, workdir / "keys")
    config["state_dir"] = str(workdir / "state")
    config["health"] = {"interval_seconds": 3600}
    config["systems"][0]["watcher"] = WATCHER  # type: ignore[index]
    config.update(extra)
    path = workdir / "hpcgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def serve(config: Path, workdir: Path, workers: int) -> Workers:
    port = free_port()
    log_path = workdir / "serve.log"
    argv = [sys.executable, "-m", "hpcgate.cli", "serve", "--config", str(config)]
    process = subprocess.Popen(
        [*argv, "--port", str(port), "--workers", str(workers)],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    system = yaml.safe_load(config.read_text())["systems"][0]["name"]
    served = Workers(port, process, log_path, create_signing_key(workdir / "keys"), system)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        if log_path.read_text().count("Application startup complete") >= workers:
            return served
        time.sleep(0.2)
    served.stop()
    raise AssertionError(f"the workers did not start:\n{log_path.read_text()}")


def established(peer_filter: str) -> list[str]:
    """``ss``'s lines for the established TCP connections that match ``peer_filter``
    (``sport = :8000``, say), each with the pids holding it."""
    return subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( {peer_filter} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


def owner(connection: http.client.HTTPConnection, port: int, *, wait: float = 2.0) -> int | None:
    """The pid of the server process holding ``connection`` (from ``ss``).

    A connection the kernel has established but no worker has accepted yet shows no
    pid: asked again until one does. None after ``wait`` s, or at once when the
    server side is gone: it sat in the queue of a socket whose worker died, and the
    kernel reset it."""
    assert connection.sock is not None
    local = connection.sock.getsockname()[1]
    server_side = re.compile(rf":{local}\s")
    deadline = time.monotonic() + wait
    while True:
        lines = [line for line in established(f"sport = :{port}") if server_side.search(line + " ")]
        if not lines:
            return None
        found = re.search(r"pid=(\d+)", lines[0])
        if found is not None:
            return int(found.group(1))
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def pinned(server: Workers) -> dict[int, http.client.HTTPConnection]:
    """One open connection to each worker, by worker pid."""
    wanted = server.worker_pids()
    found: dict[int, http.client.HTTPConnection] = {}
    for _ in range(64):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        connection.connect()
        pid = owner(connection, server.port)
        if pid is None or pid in found:
            connection.close()
        else:
            found[pid] = connection
        if set(found) == wanted:
            return found
    raise AssertionError(f"connections reached only {set(found)} of {wanted}")


def call(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    sent = {**headers, **({"Content-Type": "application/json"} if data else {})}
    connection.request(method, path, body=data, headers=sent)
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def workers(
    request: pytest.FixtureRequest, site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    workdir = tmp_path_factory.mktemp(f"workers-{request.param}")
    extra: dict[str, Any] = {}
    if request.param == "redis":
        extra["idempotency"] = {
            "backend": "redis",
            "redis_url": request.getfixturevalue("redis_url"),
            "redis_key_prefix": f"workers:{uuid.uuid4().hex[:8]}:",
        }
    server = serve(write_config(site_env, workdir, extra), workdir, 2)
    yield server
    server.stop()


def test_two_workers_serve(workers: Workers) -> None:
    connections = pinned(workers)
    assert len(connections) == 2
    for connection in connections.values():
        status, _, body = call(connection, "GET", "/status/systems", workers.headers())
        assert status == 200, body
        assert json.loads(body)["systems"][0]["name"] == workers.system
        connection.close()


def submission(site_env: SiteEnv, name: str, script: str) -> dict[str, Any]:
    return {
        "job": {
            "name": name,
            "workingDirectory": site_env.scratch("hpcuser1"),
            "script": f"#!/bin/bash\n{script}\n",
            "standardOutput": "/dev/null",
        }
    }


async def test_one_key_to_both_workers_makes_one_job(
    workers: Workers, site_env: SiteEnv, ssh_as: Any
) -> None:
    connections = list(pinned(workers).values())
    name = f"wk-{uuid.uuid4().hex[:8]}"
    headers = {**workers.headers(), "Idempotency-Key": uuid.uuid4().hex}
    body = submission(site_env, name, "sleep 1")
    path = f"/compute/{workers.system}/jobs"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda c: call(c, "POST", path, headers, body), connections))
    for connection in connections:
        connection.close()
    assert [status for status, _, _ in answers] == [201, 201], answers
    ids = {json.loads(body)["jobId"] for _, _, body in answers}
    assert len(ids) == 1, answers
    replayed = [h.get("idempotent-replayed") for _, h, _ in answers]
    assert replayed.count("true") == 1, replayed
    conn = await ssh_as("hpcuser1")
    listing = await conn.run(shlex.join(["squeue", "-h", "-t", "all", "-n", name, "-o", "%i"]))
    assert str(listing.stdout).split() == [str(ids.pop())]


def requests_seen(connection: http.client.HTTPConnection) -> float:
    status, _, body = call(connection, "GET", "/metrics", {})
    assert status == 200
    return metric_values(
        body.decode(), "hpcgate_http_requests_total", route="/status/systems", status="200"
    )


def test_metrics_count_every_worker(workers: Workers) -> None:
    connections = pinned(workers)
    first, second = connections.values()
    before = [requests_seen(c) for c in (first, second)]
    for connection, times in ((first, 3), (second, 5)):
        for _ in range(times):
            status, _, body = call(connection, "GET", "/status/systems", workers.headers())
            assert status == 200, body
    # a request is counted once its answer is sent: give the last one a moment
    deadline = time.monotonic() + 10
    while True:
        seen = [requests_seen(c) - b for c, b in zip((first, second), before, strict=True)]
        if seen == [8, 8] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for connection in connections.values():
        connection.close()
    assert seen == [8, 8], (before, seen)


def watcher_squeues(connection: http.client.HTTPConnection) -> float:
    status, _, body = call(connection, "GET", "/metrics", {})
    assert status == 200
    return commands(body.decode(), "squeue", source="watcher")


def test_one_watcher_round_per_interval_for_all_workers(
    workers: Workers, site_env: SiteEnv
) -> None:
    waiting = pinned(workers)
    scraping = pinned(workers)
    path = f"/compute/{workers.system}/jobs"
    status, _, body = call(
        next(iter(waiting.values())),
        "POST",
        path,
        workers.headers(),
        submission(site_env, f"wk-{uuid.uuid4().hex[:8]}", "sleep 7"),
    )
    assert status == 201, body
    job_id = json.loads(body)["jobId"]
    wait = f"{path}/{job_id}?waitFor=terminal&timeout=60"
    headers = workers.headers()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiters = [pool.submit(call, c, "GET", wait, headers) for c in waiting.values()]
        time.sleep(1.5)  # both waiting, rounds at the fast pace
        before = {pid: watcher_squeues(c) for pid, c in scraping.items()}
        time.sleep(WINDOW)
        after = {pid: watcher_squeues(c) for pid, c in scraping.items()}
        ended = [future.result(timeout=90) for future in waiters]
    for connection in [*waiting.values(), *scraping.values()]:
        connection.close()
    states = [json.loads(body)["jobs"][0]["status"]["state"] for _, _, body in ended]
    assert states == ["COMPLETED", "COMPLETED"], ended
    # /metrics from either worker counts both: each sees every round, run by one
    counts = sorted(after[pid] - before[pid] for pid in before)
    expected = WINDOW / MIN_INTERVAL
    print(f"watcher squeue commands of both workers in {WINDOW:g} s, per scrape: {counts}")
    for count in counts:
        assert expected / 2 <= count <= expected + 2, counts
