"""The lean path (``hpcgate.api.hotpath``) recognises every hot route (no site needed).

A route whose dependencies or query parameters change is left to FastAPI by the
lean path; this test makes such a change visible rather than a silent slowdown.
The answers themselves are compared with FastAPI's in tests/filesystem/test_hotpath.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Header, Query
from fastapi.routing import APIRoute

from hpcgate.api import hotpath, hotpath_events
from hpcgate.api.app import create_app
from hpcgate.api.dependencies import SystemDep, get_filesystem
from hpcgate.api.routers import compute
from tests.api.helpers import unit_settings


def _app(tmp_path: Path) -> FastAPI:
    settings = unit_settings(tmp_path)
    return create_app(settings)


def test_every_hot_route_is_recognised(tmp_path: Path) -> None:
    app = _app(tmp_path)
    routes = {hot.route.path for hot in hotpath._hot_routes(app)}
    assert routes == {
        "/compute/{system_name}/jobs/{job_id}",
        "/filesystem/{system_name}/ops/stat",
        "/filesystem/{system_name}/ops/ls",
    }
    streams = {stream.route.path for stream in hotpath_events.lean_streams(app)}
    assert streams == {
        "/compute/{system_name}/jobs/{job_id}",
        "/compute/{system_name}/jobs/{job_id}/events",
    }


async def _as_before(
    ctx: SystemDep,
    job_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[str | None, Query(alias="lastEventId")] = None,
) -> None: ...


async def _extra_query(
    ctx: SystemDep,
    job_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[str | None, Query(alias="lastEventId")] = None,
    also: int = 0,
) -> None: ...


async def _extra_header(
    ctx: SystemDep,
    job_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[str | None, Query(alias="lastEventId")] = None,
    other: Annotated[str | None, Header()] = None,
) -> None: ...


async def _extra_dependency(
    ctx: SystemDep,
    job_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[str | None, Query(alias="lastEventId")] = None,
    fs: Annotated[object, Depends(get_filesystem)] = None,
) -> None: ...


@pytest.mark.parametrize(
    ("replacement", "lean"),
    [(_as_before, True), (_extra_query, False), (_extra_header, False), (_extra_dependency, False)],
)
def test_a_changed_streaming_route_is_left_to_fastapi(
    tmp_path: Path, replacement: Callable[..., Any], lean: bool
) -> None:
    """The events route given one more query parameter, header or dependency (its
    endpoint the same object): the lean path leaves it to FastAPI (``_as_before``,
    the same parameters again, stays lean)."""
    app = _app(tmp_path)
    route = next(
        r for r in app.routes if isinstance(r, APIRoute) and r.endpoint is compute.stream_job_events
    )
    probe = FastAPI()
    probe.get(route.path)(replacement)
    changed = probe.routes[-1]
    assert isinstance(changed, APIRoute)
    route.dependant = changed.dependant
    streams = {stream.route.path for stream in hotpath_events.lean_streams(app)}
    events = "/compute/{system_name}/jobs/{job_id}/events"
    assert streams == {"/compute/{system_name}/jobs/{job_id}"} | ({events} if lean else set())
