"""What the lean paths (``hotpath``, ``hotpath_events``) share: the dependencies every
lean route must have, the route check, the caller's system context, and answers
(results and errors) made as FastAPI makes them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, serialize_response
from starlette.requests import Request
from starlette.responses import Response

from hpcgate.api import dependencies

SYSTEM: frozenset[Any] = frozenset(
    {
        dependencies._services,
        dependencies._bearer,
        dependencies.authenticated,
        dependencies.system_context,
    }
)
"""The dependency functions of a route on ``{system_name}`` (``SystemDep``)."""


def calls(dependant: Dependant) -> set[Any]:
    """Every dependency function ``dependant`` solves, nested ones included."""
    found: set[Any] = set()
    for sub in dependant.dependencies:
        found.add(sub.call)
        found |= calls(sub)
    return found


def only_route(app: FastAPI, endpoint: Callable[..., Any]) -> APIRoute | None:
    """The one route of ``endpoint`` (None if there is none, or several)."""
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.endpoint is endpoint]
    return routes[0] if len(routes) == 1 else None


async def system_context(request: Request, system_name: str) -> dependencies.SystemContext:
    """As ``SystemDep`` solves it: the caller (token), then the system, its scopes and
    the account policy (``dependencies.system_context``)."""
    services = dependencies.get_services(request)
    principal = await dependencies.authenticated(request, services, None)
    return await dependencies.system_context(system_name, request, principal, services)


def sub_response() -> Response:
    """As FastAPI's sub-response: the headers and status the endpoint sets."""
    sub = Response()
    sub.raw_headers = []  # no content-length; its header view is made when first used
    sub.status_code = None  # type: ignore[assignment]
    return sub


async def respond(route: APIRoute, result: Any, sub: Response) -> Response:
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


async def error_response(app: FastAPI, request: Request, exc: Exception) -> Response:
    """The application's answer to ``exc`` (re-raised when only the server error
    middleware handles it, as from FastAPI)."""
    handler = _handler(app, exc)
    if handler is None:
        raise exc
    answer = handler(request, exc)
    response: Response = await answer if inspect.isawaitable(answer) else answer
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
