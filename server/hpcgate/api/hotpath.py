"""The lean path of the hottest requests: the GETs of ``ops/stat``, ``ops/ls`` and
``jobs/{id}``, and the plain submission ``POST .../jobs``.

FastAPI's per-request machinery (route matching over every route, dependency
solving, re-inspecting each query parameter's annotation, the exception and exit
stack layers) cost as much CPU as the work of these requests (bench/README.md).
This middleware sits inside the edge (token, rate limit, body bounds) and the
request context (request id, access log, metrics), and answers the plain forms of
those three routes itself by calling what FastAPI would call, in the same order:

* the route's own dependency functions (``authenticated``, ``system_context``:
  system, scopes, account policy; ``get_filesystem``: health) and its endpoint
  function (health, visibility, path policy, bounds stay in there);
* the route's own path regex, response field and serialisation (pydantic-core
  ``dump_json``, as FastAPI), and the application's exception handlers.

A submission (no query string, ``Content-Type: application/json``, at most one
non-empty ``Idempotency-Key``) is read through the ``receive`` the edge installed
(its body cap and read timeout), parsed with the route's own body model and given
to the route's dependencies and endpoint (directive checks, idempotency, the
watcher stay in there). A body that does not validate is handed to FastAPI as
read, so its 422 is FastAPI's own.

The long-lived forms, an SSE job stream and a ``waitFor`` long-poll, are served by
``hotpath_events`` (shared helpers: ``hotpath_shared``).

Anything it does not recognise goes to FastAPI unchanged: another method or path,
an unknown, repeated or unusual query parameter (a boolean spelt
other than ``true``/``false``/``1``/``0``/blank, a missing or empty ``path``). At
start it checks that each route still has exactly the dependencies and query
parameters it expects; a route that changed is left to FastAPI (and logged), so a
check added to a route is never skipped here.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, params
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette._utils import get_route_path
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hpcgate.api import dependencies
from hpcgate.api import hotpath_shared as shared
from hpcgate.api.hotpath_events import LeanStream, lean_streams
from hpcgate.api.routers import compute, filesystem
from hpcgate.compute.scheduler.models import JobSubmitRequest

logger = logging.getLogger(__name__)

_BOOLS = {"": False, "false": False, "true": True, "0": False, "1": True}

Handler = Callable[
    [Request, dependencies.SystemContext, dict[str, str], dict[str, Any], Response], Awaitable[Any]
]


async def _job(
    request: Request,
    ctx: dependencies.SystemContext,
    params: dict[str, str],
    query: dict[str, Any],
    response: Response,
) -> Any:
    return await compute.get_job(ctx, params["job_id"], request, response)


async def _stat(
    request: Request,
    ctx: dependencies.SystemContext,
    params: dict[str, str],
    query: dict[str, Any],
    response: Response,
) -> Any:
    return await filesystem.stat(await dependencies.get_filesystem(ctx), **query)


async def _ls(
    request: Request,
    ctx: dependencies.SystemContext,
    params: dict[str, str],
    query: dict[str, Any],
    response: Response,
) -> Any:
    return await filesystem.list_directory(await dependencies.get_filesystem(ctx), **query)


@dataclass(frozen=True)
class _Spec:
    """What the lean path of one route calls and accepts."""

    endpoint: Callable[..., Any]
    handler: Handler
    dependencies: frozenset[Any]
    texts: frozenset[str]  # query aliases read as non-empty text
    bools: frozenset[str]  # query aliases read as booleans
    optional: frozenset[str]  # query aliases the route has that the lean path leaves to FastAPI


_SPECS = (
    _Spec(
        compute.get_job,
        _job,
        shared.SYSTEM,
        frozenset(),
        frozenset(),
        frozenset({"waitFor", "timeout", "since", "state"}),
    ),
    _Spec(
        filesystem.stat,
        _stat,
        shared.SYSTEM | {dependencies.get_filesystem},
        frozenset({"path"}),
        frozenset({"dereference"}),
        frozenset(),
    ),
    _Spec(
        filesystem.list_directory,
        _ls,
        shared.SYSTEM | {dependencies.get_filesystem},
        frozenset({"path"}),
        frozenset({"showHidden", "numericUid", "recursive", "dereference"}),
        frozenset(),
    ),
)


@dataclass(frozen=True)
class _Hot:
    route: APIRoute
    spec: _Spec
    names: dict[str, str]  # query alias -> the endpoint's parameter name


def _hot_routes(app: FastAPI) -> list[_Hot]:
    """The routes of ``_SPECS`` whose dependencies and parameters are as expected."""
    hot = []
    for spec in _SPECS:
        route = shared.only_route(app, spec.endpoint)
        if route is None:
            continue
        dependant = route.dependant
        aliases = {field.alias: field.name for field in dependant.query_params}
        as_expected = (
            shared.calls(dependant) == spec.dependencies
            and set(aliases) == spec.texts | spec.bools | spec.optional
            and not dependant.header_params
            and not dependant.cookie_params
            and dependant.body_params == []
            and route.methods == {"GET"}
            and isinstance(route.response_class, DefaultPlaceholder)
            and route.response_field is not None
        )
        if not as_expected:
            logger.warning("the lean path leaves %s to FastAPI: the route changed", route.path)
            continue
        hot.append(_Hot(route, spec, aliases))
    return hot


_SUBMIT_PARAMETERS = ("ctx", "body", "response", "idempotency_key", "dry_run")


def _submit_route(app: FastAPI) -> APIRoute | None:
    """The submission route, if its dependencies, parameters and body are as expected."""
    route = shared.only_route(app, compute.submit_job)
    if route is None:
        return None
    dependant = route.dependant
    body = dependant.body_params
    as_expected = (
        tuple(inspect.signature(compute.submit_job).parameters) == _SUBMIT_PARAMETERS
        and shared.calls(dependant) == shared.SYSTEM
        and [(f.name, f.alias) for f in dependant.query_params] == [("dry_run", "dryRun")]
        and [(f.name, f.alias) for f in dependant.header_params]
        == [("idempotency_key", "Idempotency-Key")]
        and not dependant.cookie_params
        and len(body) == 1
        and body[0].name == "body"
        and type(body[0].field_info) is params.Body
        and body[0].field_info.annotation is JobSubmitRequest
        and not body[0].field_info.metadata
        and dependant.response_param_name == "response"
        and route.methods == {"POST"}
        and isinstance(route.response_class, DefaultPlaceholder)
        and route.response_field is not None
        and route.status_code == 201
    )
    if not as_expected:
        logger.warning("the lean path leaves %s to FastAPI: the route changed", route.path)
        return None
    return route


def _plain_submission(headers: list[tuple[bytes, bytes]]) -> tuple[bool, str | None]:
    """(lean?, Idempotency-Key): JSON as ``application/json``, at most one non-empty key."""
    content_types = 0
    json_body = False
    keys: list[bytes] = []
    for name, value in headers:
        if name == b"content-type":
            content_types += 1
            json_body = value == b"application/json"
        elif name == b"idempotency-key":
            keys.append(value)
    if content_types != 1 or not json_body or len(keys) > 1:
        return False, None
    if not keys:
        return True, None
    if not keys[0] or not keys[0].isascii():
        return False, None
    return True, keys[0].decode("ascii")


def _parsed(raw: bytes) -> JobSubmitRequest | None:
    """The body as the route's model, or None: FastAPI answers (an empty or invalid body)."""
    if not raw:
        return None
    try:
        return JobSubmitRequest.model_validate_json(raw)
    except ValidationError:
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the body already read given again (for FastAPI)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


def _query(hot: _Hot, raw: bytes) -> dict[str, Any] | None:
    """The endpoint's query arguments, or None: leave the request to FastAPI."""
    spec = hot.spec
    values: dict[str, Any] = {}
    if not raw:
        items: list[tuple[str, str]] = []
    else:
        items = QueryParams(raw).multi_items()
    for alias, value in items:
        name = hot.names.get(alias)
        if name is None or name in values or alias in spec.optional:
            return None
        if alias in spec.bools:
            flag = _BOOLS.get(value)
            if flag is None:
                return None
            values[name] = flag
        elif value:
            values[name] = value
        else:
            return None
    if any(hot.names[alias] not in values for alias in spec.texts):
        return None
    return values


class HotPathMiddleware:
    """Answers the plain forms of the hot routes without FastAPI's routing and solving."""

    def __init__(self, app: ASGIApp, *, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._hot: list[_Hot] | None = None
        self._submit: list[APIRoute] | None = None
        self._streams: list[LeanStream] | None = None

    def _stream_routes(self) -> list[LeanStream]:
        if self._streams is None:
            self._streams = lean_streams(self.api)
        return self._streams

    def _routes(self) -> list[_Hot]:
        if self._hot is None:
            self._hot = _hot_routes(self.api)
        return self._hot

    def _submit_routes(self) -> list[APIRoute]:
        if self._submit is None:
            route = _submit_route(self.api)
            self._submit = [] if route is None else [route]
        return self._submit

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The awaitable that answers: the lean path's, or FastAPI's.

        A plain function, not a coroutine: no frame of this middleware stays alive
        while an answer (ten thousand open streams) is awaited."""
        if scope["type"] != "http" or scope["method"] not in ("GET", "POST"):
            return self.app(scope, receive, send)
        state = scope.get("state")
        if not state or "principal" not in state or self.api.dependency_overrides:
            # no services yet, or dependencies replaced (tests): FastAPI decides
            return self.app(scope, receive, send)
        path = get_route_path(scope)
        if scope["method"] == "POST":
            for route in self._submit_routes():
                match = route.path_regex.match(path)
                if match is None or scope["query_string"]:
                    break
                lean, key = _plain_submission(scope["headers"])
                if not lean:
                    break
                scope["route"] = route
                return self._submit_job(route, match.groupdict(), key, scope, receive, send)
            return self.app(scope, receive, send)
        for stream in self._stream_routes():
            match = stream.route.path_regex.match(path)
            if match is None:
                continue
            arguments = stream.arguments(scope)
            if arguments is None:
                break  # the plain job GET (below), or FastAPI
            scope["route"] = stream.route
            return stream.serve(self.api, match.groupdict(), arguments, scope, receive, send)
        for hot in self._routes():
            match = hot.route.path_regex.match(path)
            if match is None:
                continue
            query = _query(hot, scope["query_string"])
            if query is None:
                break
            scope["route"] = hot.route
            return self._serve(hot, match.groupdict(), query, scope, receive, send)
        return self.app(scope, receive, send)

    async def _serve(
        self,
        hot: _Hot,
        params: dict[str, str],
        query: dict[str, Any],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        request = Request(scope, receive)
        try:
            response = await self._answer(hot, request, params, query)
        except Exception as exc:
            response = await self._error(request, exc)
        await response(scope, receive, send)

    async def _submit_job(
        self,
        route: APIRoute,
        params: dict[str, str],
        key: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """``POST .../jobs`` as FastAPI's handler: the body read (as FastAPI reads it,
        before the dependencies), then validated, then the dependencies and endpoint."""
        request = Request(scope, receive)
        try:
            try:
                raw = await request.body()
            except HTTPException:
                raise
            except Exception as exc:  # as FastAPI: the edge answers its own cap and timeout
                raise HTTPException(400, "There was an error parsing the body") from exc
            job = _parsed(raw)
            if job is None:
                response = None  # FastAPI's 422 (or its answer) from the same bytes
            else:
                response = await self._submitted(route, request, params, job, key)
        except Exception as exc:
            response = await self._error(request, exc)
        if response is None:
            await self.app(scope, _replay(raw, receive), send)
            return
        await response(scope, receive, send)

    async def _submitted(
        self,
        route: APIRoute,
        request: Request,
        params: dict[str, str],
        job: JobSubmitRequest,
        key: str | None,
    ) -> Response:
        ctx = await shared.system_context(request, params["system_name"])
        sub = shared.sub_response()
        result = await compute.submit_job(ctx, job, sub, idempotency_key=key, dry_run=False)
        return await shared.respond(route, result, sub)

    async def _error(self, request: Request, exc: Exception) -> Response:
        return await shared.error_response(self.api, request, exc)

    async def _answer(
        self, hot: _Hot, request: Request, params: dict[str, str], query: dict[str, Any]
    ) -> Response:
        ctx = await shared.system_context(request, params["system_name"])
        sub = shared.sub_response()
        result = await hot.spec.handler(request, ctx, params, query, sub)
        return await shared.respond(hot.route, result, sub)
