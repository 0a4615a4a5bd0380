"""The lean path of the hottest GETs: ``ops/stat``, ``ops/ls`` and ``jobs/{id}``.

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

from fastapi import FastAPI
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, serialize_response
from starlette._utils import get_route_path
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hpcgate.api import dependencies
from hpcgate.api.routers import compute, filesystem

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
    """Answers the plain ``GET`` of the hot routes without FastAPI's routing and solving."""

    def __init__(self, app: ASGIApp, *, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._hot: list[_Hot] | None = None

    def _routes(self) -> list[_Hot]:
        if self._hot is None:
            self._hot = _hot_routes(self.api)
        return self._hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        state = scope.get("state")
        if not state or "principal" not in state:
            await self.app(scope, receive, send)  # no services yet: FastAPI decides
            return
        path = get_route_path(scope)
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
            handler = _handler(self.api, exc)
            if handler is None:
                raise  # to the server error middleware, as from FastAPI
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    async def _answer(
        self, hot: _Hot, request: Request, params: dict[str, str], query: dict[str, Any]
    ) -> Response:
        services = dependencies.get_services(request)
        principal = await dependencies.authenticated(request, services, None)
        ctx = await dependencies.system_context(params["system_name"], request, principal, services)
        # as FastAPI's sub-response: headers and status the endpoint sets
        sub = Response()
        del sub.headers["content-length"]
        sub.status_code = None  # type: ignore[assignment]
        result = await hot.spec.handler(request, ctx, params, query, sub)
        if isinstance(result, Response):
            return result
        route = hot.route
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
