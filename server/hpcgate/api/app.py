"""The application factory: configuration in, an ASGI app out."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hpcgate import __version__
from hpcgate.api.hotpath import HotPathMiddleware
from hpcgate.api.middleware import FrontedAPI
from hpcgate.api.routers import compute, filesystem, jobpage, metrics, status, transfer
from hpcgate.config import Settings
from hpcgate.errors import ApiError
from hpcgate.services import Services
from hpcgate.wire import ErrorBody, ErrorData, ErrorField

logger = logging.getLogger(__name__)


def _error_response(
    request: Request,
    status_code: int,
    body: ErrorBody,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body.user = getattr(request.state, "user", None)
    return JSONResponse(
        body.model_dump(by_alias=True, mode="json"), status_code=status_code, headers=headers
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    body = ErrorBody(error_type=exc.error_type, message=exc.message, caused_by=exc.caused_by)
    return _error_response(request, exc.status_code, body, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [
        ErrorField(
            location=str(error["loc"][0]) if error["loc"] else "",
            name=".".join(str(part) for part in error["loc"][1:]),
            message=error["msg"],
        )
        for error in exc.errors()
    ]
    summary = "; ".join(f"{f.name or f.location}: {f.message}" for f in fields)
    body = ErrorBody(
        error_type="validation",
        message=f"Invalid request: {summary}",
        data=ErrorData(fields=fields),
    )
    return _error_response(request, 400, body)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error_response(
        request, exc.status_code, ErrorBody(message=str(exc.detail)), dict(exc.headers or {})
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error(
        "unhandled error",
        exc_info=exc,
        extra={"request_id": getattr(request.state, "request_id", None)},
    )
    body = ErrorBody(message="Internal server error; the request id identifies it in the logs")
    return _error_response(request, 500, body)


def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    """Build the API for ``settings``; ``services`` lets tests supply their own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services or Services.build(settings)
        app.state.services = owned
        await owned.start()
        # what exists now lives as long as the process: out of the cyclic garbage
        # collector's way, so its collections scan only what requests allocate
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await owned.close()

    # its own call is the request's outer layers: request id, edge, errors, access log
    app = FrontedAPI(
        settings=settings,
        title="hpcgate",
        version=__version__,
        description="A FirecREST v2 compatible REST API for Slurm clusters, over SSH as the user.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(status.router)
    app.include_router(compute.router)
    app.include_router(jobpage.links)
    app.include_router(jobpage.pages)
    app.include_router(filesystem.router)
    app.include_router(transfer.router)
    app.include_router(metrics.router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    # the hot GETs after the edge's checks, without FastAPI's routing
    app.add_middleware(HotPathMiddleware, api=app)
    return app
