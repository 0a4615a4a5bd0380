"""The lean path of the long-lived requests (``hpcgate.api.hotpath_events``) answers
exactly as FastAPI, and a client that goes away gives its place back.

Each request is sent twice to a real server (in this process, on the real site):
in its plain form, which the lean path serves, and with one query parameter it does
not know, which it leaves to FastAPI (which ignores it). Status, headers and body
bytes must be the same, errors included; a counter on the lean path proves which
one answered. The server runs with ``hpcgate serve``'s own protocol (bounded
httptools, whose ``connection_lost`` calls back) or with h11 (the task fallback).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from hpcgate.api import hotpath_events
from hpcgate.api.app import create_app
from hpcgate.api.connection_httptools import BoundedHttpToolsProtocol
from hpcgate.api.serving import uvicorn_options
from hpcgate.auth.localauth import LocalIssuer, create_signing_key
from hpcgate.cli import local_site_config
from hpcgate.compute.watcher import JobWatcher
from hpcgate.config import Settings
from hpcgate.services import Services
from tests.access_log import AccessLines
from tests.events.conftest import WATCHER
from tests.server import free_port
from tests.site import SiteEnv

pytestmark = [pytest.mark.site]

BUDGET = 2  # max_subscribers_per_user
MAX_WAIT = 60.0  # the default timeout
_VOLATILE = {"x-request-id", "date"}
_FASTAPI = {"unknownParameter": "1"}


@dataclass
class Site:
    url: str
    system: str
    issuer: LocalIssuer
    watcher: JobWatcher
    protocol: str

    def client(self, user: str = "hpcuser1", token: str | None = None) -> httpx.Client:
        token = token or self.issuer.mint(user)
        return httpx.Client(
            base_url=f"{self.url}/compute/{self.system}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )

    def settled(self, user: str = "hpcuser1") -> None:
        """Until ``user`` holds no place and the watcher has no subscriber."""
        deadline = time.monotonic() + 10
        while self.watcher.held(user) or self.open_subscribers():
            assert time.monotonic() < deadline, "a place or subscription was never given back"
            time.sleep(0.05)

    def open_subscribers(self) -> int:
        """Open streams and long-polls, as the metrics count them."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        names = ("hpcgate_sse_subscribers", "hpcgate_longpoll_waiters")
        return round(
            sum(
                float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line.startswith(names)
            )
        )


@contextlib.contextmanager
def _serving(site_env: SiteEnv, key_dir: Path, protocol: str) -> Iterator[Site]:
    config = local_site_config(site_env.values, key_dir)
    config["health"] = {"interval_seconds": 3600}
    config["http"] = {"protocol": protocol}
    watcher = {**WATCHER, "max_subscribers_per_user": BUDGET, "max_wait_seconds": MAX_WAIT}
    config["systems"][0]["watcher"] = watcher  # type: ignore[index]
    settings = Settings(**config)  # type: ignore[arg-type]
    services = Services.build(settings)
    app = create_app(settings, services=services)
    port = free_port()
    options = {**uvicorn_options(settings), "log_level": "warning"}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, name=f"lean-{protocol}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    system = settings.systems[0].name
    try:
        yield Site(
            f"http://127.0.0.1:{port}",
            system,
            create_signing_key(key_dir),
            services.watchers[system],
            protocol,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module", params=["httptools", "h11"])
def site(
    request: pytest.FixtureRequest, site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    with _serving(site_env, tmp_path_factory.mktemp("lean-keys"), request.param) as served:
        yield served


@pytest.fixture
def lean(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the lean streaming path answered."""
    paths: list[str] = []
    serve = hotpath_events.LeanStream.serve

    async def counting(self: Any, api: Any, params: Any, arguments: Any, scope: Any, *rest: Any):
        paths.append(scope["path"])
        return await serve(self, api, params, arguments, scope, *rest)

    monkeypatch.setattr(hotpath_events.LeanStream, "serve", counting)
    return paths


@pytest.fixture
def callbacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per disconnect watch taken by the protocol's callback."""
    taken: list[int] = []
    watch = BoundedHttpToolsProtocol._watch_disconnect

    def counting(self: Any, callback: Callable[[], None]) -> Callable[[], None]:
        taken.append(1)
        return watch(self, callback)

    monkeypatch.setattr(BoundedHttpToolsProtocol, "_watch_disconnect", counting)
    return taken


def _submit(client: httpx.Client, seconds: int) -> str:
    body = {
        "job": {
            "name": "lean-events",
            "workingDirectory": "/tmp",
            "script": f"#!/bin/bash\nsleep {seconds}\n",
            "standardOutput": "/dev/null",
        }
    }
    answer = client.post("/jobs", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["jobId"])


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k not in _VOLATILE]


def _get(client: httpx.Client, url: str, params: dict[str, str], headers: Any) -> httpx.Response:
    return client.get(url, params=params, headers=headers or {})


def _same(
    client: httpx.Client,
    url: str,
    lean: list[str],
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    *,
    taken: bool = True,
) -> httpx.Response:
    """GET ``url`` by the lean path (``taken``: else it must decline) and by FastAPI;
    assert both answer alike."""
    params = params or {}
    before = len(lean)
    first = _get(client, url, params, headers)
    assert len(lean) == before + taken, f"lean path taken: {not taken} for {url} {params}"
    full = _get(client, url, {**params, **_FASTAPI}, headers)
    assert len(lean) == before + taken, "FastAPI's answer went through the lean path"
    assert (first.status_code, first.content) == (full.status_code, full.content)
    assert _headers(first) == _headers(full)
    return first


def _ended(client: httpx.Client, job_id: str) -> None:
    answer = client.get(f"/jobs/{job_id}", params={"waitFor": "terminal", "timeout": "25"})
    assert answer.headers["X-Hpcgate-Wait"] == "terminal", answer.text


def test_wait_as_fastapi(site: Site, lean: list[str]) -> None:
    with site.client() as alice, site.client("hpcuser2") as bob:
        job_id = _submit(alice, 120)
        url = f"/jobs/{job_id}"
        now = _same(alice, url, lean, {"waitFor": "terminal", "timeout": "0"})
        assert now.status_code == 200 and now.headers["X-Hpcgate-Wait"] == "timeout"
        changed = _same(alice, url, lean, {"waitFor": "change", "state": "nosuchstate"})
        assert changed.headers["X-Hpcgate-Wait"] == "changed"
        since = {"waitFor": "change", "since": "0", "timeout": "0.5"}
        assert _same(alice, url, lean, since).headers["X-Hpcgate-Wait"] == "changed"
        # the endpoint's own errors, by both paths
        assert _same(bob, url, lean, {"waitFor": "terminal", "timeout": "0"}).status_code == 404
        too_long = {"waitFor": "terminal", "timeout": str(MAX_WAIT + 1)}
        assert _same(alice, url, lean, too_long).status_code == 400
        assert _same(alice, "/jobs/x;id", lean, {"waitFor": "change"}).status_code == 400
        with site.client(token="not-a-jwt") as forged:
            assert _same(forged, url, lean, {"waitFor": "terminal"}, taken=False).status_code == 401
        with httpx.Client(base_url=alice.base_url) as anonymous:
            refused = _same(anonymous, url, lean, {"waitFor": "terminal"}, taken=False)
            assert refused.status_code == 401
        unknown = httpx.Client(base_url=f"{site.url}/compute/nosuch", headers=alice.headers)
        with unknown:
            assert _same(unknown, url, lean, {"waitFor": "terminal"}).status_code == 404
        # what FastAPI refuses is left to it (its validation error, 400 here)
        for bad in (
            {"waitFor": "never"},
            {"waitFor": ""},
            {"waitFor": "terminal", "timeout": "-1"},
            {"waitFor": "terminal", "timeout": "nan"},
            {"waitFor": "terminal", "timeout": "soon"},
            {"waitFor": "change", "since": "-3"},
            {"waitFor": "change", "state": "RUN NING"},
            {"waitFor": "change", "state": "RUNNING\n"},
        ):
            assert _same(alice, url, lean, bad, taken=False).status_code == 400, bad
        # a repeated parameter, or one with a body: FastAPI
        repeated = f"{url}?waitFor=terminal&waitFor=change&timeout=0"
        assert _same(alice, repeated, lean, taken=False).status_code == 200
        now_params = {"waitFor": "terminal", "timeout": "0"}
        with_body = {"Content-Length": "0"}
        assert _same(alice, url, lean, now_params, with_body, taken=False).status_code == 200
        alice.delete(url)
        site.settled()


def test_wait_ends_with_the_job(site: Site, lean: list[str]) -> None:
    with site.client() as alice:
        job_id = _submit(alice, 2)
        answer = alice.get(f"/jobs/{job_id}", params={"waitFor": "terminal", "timeout": "25"})
        assert lean[-1].endswith(f"/jobs/{job_id}")
        assert answer.status_code == 200 and answer.headers["X-Hpcgate-Wait"] == "terminal"
        assert answer.json()["jobs"][0]["status"]["state"] == "COMPLETED"
        again = _same(alice, f"/jobs/{job_id}", lean, {"waitFor": "terminal", "timeout": "5"})
        assert (again.content, _headers(again)) == (answer.content, _headers(answer))
        site.settled()


def test_events_as_fastapi(site: Site, lean: list[str]) -> None:
    with site.client() as alice, site.client("hpcuser2") as bob:
        job_id = _submit(alice, 1)
        _ended(alice, job_id)
        url = f"/jobs/{job_id}/events"
        stream = _same(alice, url, lean)
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert b"event: terminal" in stream.content
        last = stream.content.split(b"id: ")[1].split(b"\n")[0].decode()
        resumed = _same(alice, url, lean, headers={"Last-Event-ID": last})
        assert b"event:" not in resumed.content  # nothing newer: the stream just ends
        assert _same(alice, url, lean, {"lastEventId": last}).content == resumed.content
        assert _same(alice, url, lean, headers={"Last-Event-ID": "junk"}).content == stream.content
        assert _same(bob, url, lean).status_code == 404
        assert _same(alice, "/jobs/999999999/events", lean).status_code == 404
        assert _same(alice, "/jobs/x;id/events", lean).status_code == 400
        with site.client(token="not-a-jwt") as forged:
            assert _same(forged, url, lean, taken=False).status_code == 401
        unknown = httpx.Client(base_url=f"{site.url}/compute/nosuch", headers=alice.headers)
        with unknown:
            assert _same(unknown, url, lean).status_code == 404
        assert _same(alice, url, lean, {"lastEventId": ""}, taken=False).status_code == 200
        site.settled()


def test_budget_full_is_429_both_ways(site: Site, lean: list[str]) -> None:
    with site.client() as alice, site.client() as holder:
        job_id = _submit(alice, 120)
        url = f"/jobs/{job_id}/events"
        with contextlib.ExitStack() as held:
            for _ in range(BUDGET):
                response = held.enter_context(holder.stream("GET", url))
                assert response.status_code == 200
            assert site.watcher.held("hpcuser1") == BUDGET
            refused = _same(alice, url, lean)
            assert refused.status_code == 429 and "retry-after" in refused.headers
            waited = _same(alice, f"/jobs/{job_id}", lean, {"waitFor": "terminal"})
            assert waited.status_code == 429
        site.settled()
        alice.delete(f"/jobs/{job_id}")


@pytest.mark.parametrize("kind", ["sse", "longpoll"])
def test_a_client_that_goes_away_gives_its_place_back(
    site: Site, lean: list[str], callbacks: list[int], kind: str
) -> None:
    with site.client() as alice:
        job_id = _submit(alice, 120)
        if kind == "sse":
            url, params = f"/jobs/{job_id}/events", {}
        else:
            url, params = f"/jobs/{job_id}", {"waitFor": "terminal", "timeout": str(MAX_WAIT)}
        before = len(lean)
        target = httpx.URL(f"/compute/{site.system}{url}", params=params)
        token = site.issuer.mint("hpcuser1")
        head = f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        address = httpx.URL(site.url)
        with socket.create_connection((address.host, address.port)) as gone:
            gone.sendall(head.encode())
            deadline = time.monotonic() + 10
            while not site.open_subscribers():
                assert time.monotonic() < deadline, "the request never subscribed"
                time.sleep(0.05)
            assert site.watcher.held("hpcuser1") == 1
        started = time.monotonic()
        site.settled()
        assert time.monotonic() - started < 5  # the disconnect, not the timeout
        assert len(lean) == before + 1
        # hpcgate serve's httptools protocol calls back; h11 reads receive in a task
        assert bool(callbacks) == (site.protocol == "httptools")
        alice.delete(f"/jobs/{job_id}")


def _counted(site: Site, route: str, status: int) -> float:
    """``hpcgate_http_requests_total`` for GET ``route`` answered ``status``."""
    text = httpx.get(f"{site.url}/metrics", timeout=10).text
    series = f'hpcgate_http_requests_total{{method="GET",route="{route}",status="{status}"}}'
    return sum(
        float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(series)
    )


def _subscribed(site: Site, count: int) -> None:
    deadline = time.monotonic() + 10
    while site.open_subscribers() < count:
        assert time.monotonic() < deadline, "the request never subscribed"
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["sse", "longpoll"])
def test_a_held_request_is_logged_and_counted_once(
    site: Site, lean: list[str], access: AccessLines, kind: str
) -> None:
    """Held open, ended by the client going away or by the job's end: one access log
    line and one count each, with the status sent and the whole duration."""
    with site.client() as alice:
        job_id = _submit(alice, 120)
        if kind == "sse":
            url, params = f"/jobs/{job_id}/events", {}
            route = "/compute/{system_name}/jobs/{job_id}/events"
        else:
            url, params = f"/jobs/{job_id}", {"waitFor": "terminal", "timeout": str(MAX_WAIT)}
            route = "/compute/{system_name}/jobs/{job_id}"
        counted = _counted(site, route, 200)
        gone, ended = f"gone-{kind}-{site.protocol}", f"ended-{kind}-{site.protocol}"
        target = httpx.URL(f"/compute/{site.system}{url}", params=params)
        token = site.issuer.mint("hpcuser1")
        head = (
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"X-Request-ID: {gone}\r\n\r\n"
        )
        address = httpx.URL(site.url)
        held = time.monotonic()
        with socket.create_connection((address.host, address.port)) as client:
            client.sendall(head.encode())
            _subscribed(site, 1)
            time.sleep(0.5)
            assert not access.of(gone), "logged before the request ended"
        held = time.monotonic() - held
        site.settled()

        answers: list[httpx.Response] = []

        def hold() -> None:
            with site.client() as holder:
                answers.append(holder.get(url, params=params, headers={"X-Request-ID": ended}))

        thread = threading.Thread(target=hold)
        thread.start()
        _subscribed(site, 1)
        assert not access.of(ended), "logged before the request ended"
        alice.delete(f"/jobs/{job_id}")
        thread.join(timeout=60)
        [answer] = answers
        assert answer.status_code == 200
        if kind == "sse":
            assert b"event: terminal" in answer.content
        else:
            assert answer.headers["X-Hpcgate-Wait"] == "terminal"
        site.settled()
        assert len(lean) == 2  # both served by the lean path
    deadline = time.monotonic() + 5
    while not (access.of(gone) and access.of(ended)) and time.monotonic() < deadline:
        time.sleep(0.05)
    [by_disconnect] = access.of(gone)
    [by_end] = access.of(ended)
    for record in (by_disconnect, by_end):
        assert (record.route, record.status, record.user) == (route, 200, "hpcuser1")  # type: ignore[attr-defined]
    assert by_disconnect.duration_ms >= (held - 0.2) * 1000  # type: ignore[attr-defined]
    assert _counted(site, route, 200) == counted + 2
