"""The outermost layer of a request (``hpcgate.api.middleware.FrontedAPI``), no site
needed: an unhandled error is answered 500 by the application's handler (with the
request id) and raised on to the server, every request is logged and counted exactly
once with the status sent, and the edge still refuses before the app runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from hpcgate.api.app import create_app
from hpcgate.auth.tokens import Principal
from hpcgate.errors import Unauthorized
from tests.access_log import AccessLines
from tests.api.helpers import unit_settings


class _Tokens:
    async def validate(self, token: str) -> Principal:
        if token != "good":
            raise Unauthorized("bad token")
        return Principal(username="alice", scopes=frozenset(), claims={})


class _Metrics:
    def __init__(self) -> None:
        self.observed: list[tuple[str, str, int]] = []

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.observed.append((method, route, status))


def _app(tmp_path: Path) -> tuple[FastAPI, _Metrics]:
    settings = unit_settings(tmp_path)
    app = create_app(settings)
    metrics = _Metrics()
    app.state.services = SimpleNamespace(tokens=_Tokens(), metrics=metrics)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("unexpected")

    return app, metrics


async def test_an_unhandled_error_is_answered_logged_and_raised(
    tmp_path: Path, access: AccessLines
) -> None:
    app, metrics = _app(tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RuntimeError, match="unexpected"):  # on to the server
            await client.get("/boom", headers={"Authorization": "Bearer good"})
    quiet = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=quiet, base_url="http://t") as client:
        answer = await client.get(
            "/boom", headers={"Authorization": "Bearer good", "X-Request-ID": "boom-1"}
        )
    assert answer.status_code == 500
    assert "request id" in answer.json()["message"]
    assert answer.headers["x-request-id"] == "boom-1" and "f7t-appversion" in answer.headers
    [line] = [r for r in access.records if r.request_id == "boom-1"]
    assert (line.status, line.route, line.user) == (500, "/boom", "alice")
    assert metrics.observed == [("GET", "/boom", 500)] * 2


async def test_every_answer_is_logged_and_counted_once(tmp_path: Path, access: AccessLines) -> None:
    app, metrics = _app(tmp_path)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        refused = await client.get("/boom", headers={"Authorization": "Bearer bad"})
        missing = await client.get("/nowhere", headers={"Authorization": "Bearer good"})
        public = await client.get("/openapi.json")
    assert refused.status_code == 401  # the edge: the route never ran
    assert missing.status_code == 404
    assert public.status_code == 200
    for answer in (refused, missing, public):
        assert "f7t-appversion" in answer.headers
        request_id = answer.headers["x-request-id"]
        [line] = [r for r in access.records if r.request_id == request_id]
        assert line.status == answer.status_code
    assert metrics.observed == [
        ("GET", "<unmatched>", 401),
        ("GET", "<unmatched>", 404),
        ("GET", "/openapi.json", 200),
    ]
