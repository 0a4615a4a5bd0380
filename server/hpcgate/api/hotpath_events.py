"""The lean path of the long-lived requests: the job's SSE stream
``GET .../jobs/{id}/events`` and the long-poll ``GET .../jobs/{id}?waitFor=...``.

Ten thousand of them are held open at once, and FastAPI's per-request machinery
(routing, exception layers, exit stacks, dependency solving: ~9-10 KB per request)
would stay alive for the whole wait (bench/README.md). ``HotPathMiddleware`` hands
their plain forms here, which call what FastAPI would call, in the same order:

* the routes' own dependency functions (``authenticated``, ``system_context``:
  token, system, scopes, account policy), then the endpoint itself (health, the
  watcher, ``max_wait_seconds``, capacity, visibility, budgets stay in there);
* the request head (bearer token included) dropped once the caller is known: it
  is not kept for the whole wait;
* the query and headers validated by FastAPI's own function
  (``request_params_to_args``) against the route's own fields; any error, an
  unknown or repeated query parameter, an empty value or a request with a body is
  left to FastAPI, whose answer (a 422) is then its own.

At start the routes are checked to have exactly the dependencies, parameters and
endpoint signature expected; a route that changed is left to FastAPI (and logged).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hpcgate.api import hotpath_shared as shared
from hpcgate.api.events import EventStreamResponse
from hpcgate.api.routers import compute

logger = logging.getLogger(__name__)

_BODY_HEADERS = (b"content-length", b"transfer-encoding")


@dataclass(frozen=True)
class _Shape:
    """What a lean streaming route must look like."""

    endpoint: Callable[..., Any]
    parameters: tuple[str, ...]  # the endpoint's, in order
    query: frozenset[str]  # query aliases
    headers: frozenset[str]  # header aliases
    required: str | None  # the query alias that selects the lean form (None: any query)


_WAIT = _Shape(
    compute.get_job,
    ("ctx", "job_id", "request", "response", "wait_for", "timeout", "since", "state"),
    frozenset({"waitFor", "timeout", "since", "state"}),
    frozenset(),
    "waitFor",
)
_EVENTS = _Shape(
    compute.stream_job_events,
    ("ctx", "job_id", "last_event_id", "last_event_id_query"),
    frozenset({"lastEventId"}),
    frozenset({"Last-Event-ID"}),
    None,
)


@dataclass(frozen=True)
class LeanStream:
    """One streaming route the lean path serves."""

    route: APIRoute
    shape: _Shape

    def arguments(self, scope: Scope) -> dict[str, Any] | None:
        """The endpoint's query and header arguments as FastAPI validates them, or
        None: not this lean form (FastAPI, or the plain lean GET, answers)."""
        shape, dependant = self.shape, self.route.dependant
        raw: bytes = scope["query_string"]
        if shape.required is not None and shape.required.encode() not in raw:
            return None
        query = QueryParams(raw)
        items = query.multi_items()
        aliases = {alias for alias, _ in items}
        if (
            len(aliases) != len(items)
            or not aliases <= shape.query
            or (shape.required is not None and shape.required not in aliases)
            or any(not value for _, value in items)
            or any(name in _BODY_HEADERS for name, _ in scope["headers"])
        ):
            return None
        values, errors = request_params_to_args(dependant.query_params, query)
        if errors:
            return None
        if dependant.header_params:
            found, errors = request_params_to_args(dependant.header_params, Headers(scope=scope))
            if errors:
                return None
            values.update(found)
        return values

    async def serve(
        self,
        api: FastAPI,
        params: dict[str, str],
        arguments: dict[str, Any],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        request = Request(scope, receive)
        response: Response
        try:
            ctx = await shared.system_context(request, params["system_name"])
            _forget_head(scope)
            if self.shape is _WAIT:
                sub = shared.sub_response()
                result = await compute.get_job(ctx, params["job_id"], request, sub, **arguments)
                response = await shared.respond(self.route, result, sub)
            else:
                response = await compute.stream_job_events(ctx, params["job_id"], **arguments)
        except Exception as exc:
            response = await shared.error_response(api, request, exc)
        del request  # not held for the stream's life
        await response(scope, receive, send)


def _forget_head(scope: Scope) -> None:
    """Drop the head of a request about to be held open: whatever reads it (the
    token at the edge, the request id, ``Last-Event-ID`` here) has run. Held for the
    whole wait, in the list uvicorn shares with the scope, it would be much of what
    the request keeps (the bearer token, a browser's cookies and user agent), and
    the token a secret kept for nothing."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    headers.clear()


def lean_streams(app: FastAPI) -> list[LeanStream]:
    """The streaming routes whose dependencies and parameters are as expected."""
    found = []
    for shape in (_WAIT, _EVENTS):
        route = shared.only_route(app, shape.endpoint)
        if route is None:
            continue
        if not _as_expected(route, shape):
            logger.warning("the lean path leaves %s to FastAPI: the route changed", route.path)
            continue
        found.append(LeanStream(route, shape))
    return found


def _as_expected(route: APIRoute, shape: _Shape) -> bool:
    dependant = route.dependant
    streaming = shape is _EVENTS
    return (
        tuple(inspect.signature(shape.endpoint).parameters) == shape.parameters
        and shared.calls(dependant) == shared.SYSTEM
        and {f.alias for f in dependant.query_params} == shape.query
        and {f.alias for f in dependant.header_params} == shape.headers
        and [f.name for f in dependant.path_params] == ["job_id"]
        and not dependant.cookie_params
        and not dependant.body_params
        and route.methods == {"GET"}
        and (
            route.response_class is EventStreamResponse
            if streaming
            else isinstance(route.response_class, DefaultPlaceholder)
            and route.response_field is not None
        )
    )
