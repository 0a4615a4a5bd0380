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

Anything it does not recognise goes to FastAPI unchanged: another method or path,
an unknown, repeated or unusual query parameter (``waitFor``, a boolean spelt
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
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, serialize_response
from pydantic import ValidationError
from starlette._utils import get_route_path
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hpcgate.api import dependencies
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


_SYSTEM: frozenset[Any] = frozenset(
    {
        dependencies._services,
        dependencies._bearer,
        dependencies.authenticated,
        dependencies.system_context,
    }
)
_SPECS = (
    _Spec(
        compute.get_job,
        _job,
        _SYSTEM,
        frozenset(),
        frozenset(),
        frozenset({"waitFor", "timeout", "since", "state"}),
    ),
    _Spec(
        filesystem.stat,
        _stat,
        _SYSTEM | {dependencies.get_filesystem},
        frozenset({"path"}),
        frozenset({"dereference"}),
        frozenset(),
    ),
    _Spec(
        filesystem.list_directory,
        _ls,
        _SYSTEM | {dependencies.get_filesystem},
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


def _calls(dependant: Dependant) -> set[Any]:
    found: set[Any] = set()
    for sub in dependant.dependencies:
        found.add(sub.call)
        found |= _calls(sub)
    return found


def _hot_routes(app: FastAPI) -> list[_Hot]:
    """The routes of ``_SPECS`` whose dependencies and parameters are as expected."""
    hot = []
    for spec in _SPECS:
        routes = [r for r in app.routes if isinstance(r, APIRoute) and r.endpoint is spec.endpoint]
        if len(routes) != 1:
            continue
        route = routes[0]
        dependant = route.dependant
        aliases = {field.alias: field.name for field in dependant.query_params}
        as_expected = (
            _calls(dependant) == spec.dependencies
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
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.endpoint is compute.submit_job]
    if len(routes) != 1:
        return None
    route = routes[0]
    dependant = route.dependant
    body = dependant.body_params
    as_expected = (
        tuple(inspect.signature(compute.submit_job).parameters) == _SUBMIT_PARAMETERS
        and _calls(dependant) == _SYSTEM
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

    def _routes(self) -> list[_Hot]:
        if self._hot is None:
            self._hot = _hot_routes(self.api)
        return self._hot

    def _submit_routes(self) -> list[APIRoute]:
        if self._submit is None:
            route = _submit_route(self.api)
            self._submit = [] if route is None else [route]
        return self._submit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "POST"):
            await self.app(scope, receive, send)
            return
        state = scope.get("state")
        if not state or "principal" not in state or self.api.dependency_overrides:
            # no services yet, or dependencies replaced (tests): FastAPI decides
            await self.app(scope, receive, send)
            return
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
                await self._submit_job(route, match.groupdict(), key, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        for hot in self._routes():
            match = hot.route.path_regex.match(path)
            if match is None:
                continue
            query = _query(hot, scope["query_string"])
            if query is None:
                break
            scope["route"] = hot.route
            await self._serve(hot, match.groupdict(), query, scope, receive, send)
            return
        await self.app(scope, receive, send)

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
        services = dependencies.get_services(request)
        principal = await dependencies.authenticated(request, services, None)
        ctx = await dependencies.system_context(params["system_name"], request, principal, services)
        sub = _sub_response()
        result = await compute.submit_job(ctx, job, sub, idempotency_key=key, dry_run=False)
        return await _respond(route, result, sub)

    async def _error(self, request: Request, exc: Exception) -> Response:
        handler = _handler(self.api, exc)
        if handler is None:
            raise exc  # to the server error middleware, as from FastAPI
        answer = handler(request, exc)
        response: Response = await answer if inspect.isawaitable(answer) else answer
        return response

    async def _answer(
        self, hot: _Hot, request: Request, params: dict[str, str], query: dict[str, Any]
    ) -> Response:
        services = dependencies.get_services(request)
        principal = await dependencies.authenticated(request, services, None)
        ctx = await dependencies.system_context(params["system_name"], request, principal, services)
        sub = _sub_response()
        result = await hot.spec.handler(request, ctx, params, query, sub)
        return await _respond(hot.route, result, sub)


def _sub_response() -> Response:
    """As FastAPI's sub-response: the headers and status the endpoint sets."""
    sub = Response()
    del sub.headers["content-length"]
    sub.status_code = None  # type: ignore[assignment]
    return sub


async def _respond(route: APIRoute, result: Any, sub: Response) -> Response:
    """The endpoint's result as FastAPI answers it: the route's response field."""
    if isinstance(result, Response):
        return result
    content = await serialize_response(
        field=route.response_field,
        response_content=result,
        include=route.response_model_include,
        exclude=route.response_model_exclude,
        by_alias=route.response_model_by_alias,
        exclude_unset=route.response_model_exclude_unset,
        exclude_defaults=route.response_model_exclude_defaults,
        exclude_none=route.response_model_exclude_none,
        dump_json=True,
    )
    status = sub.status_code or route.status_code or 200
    response = Response(content=content, media_type="application/json", status_code=status)
    response.headers.raw.extend(sub.headers.raw)
    return response


def _handler(app: FastAPI, exc: Exception) -> Callable[..., Any] | None:
    """The application's handler of ``exc``, as Starlette's exception middleware
    finds it (the ``Exception`` handler belongs to the server error middleware)."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            handler: Callable[..., Any] = handlers[cls]
            return handler
    return None
