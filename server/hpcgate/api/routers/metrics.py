"""``GET /metrics``: the Prometheus text rendering of ``hpcgate.operations.metrics``."""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hpcgate import errors
from hpcgate.services import Services

router = APIRouter(tags=["metrics"])


async def _scrape_token(path: Path | None) -> bytes | None:
    """The scrape token, read per scrape (off the event loop) so that it can be rotated."""
    if path is None:
        return None
    return (await asyncio.to_thread(path.read_bytes)).strip()


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format; a bearer token only when ``metrics.bearer_token_file``."""
    services: Services = request.app.state.services
    settings = services.settings.metrics
    if not settings.enabled:
        raise errors.NotFound("Metrics are disabled")
    expected = await _scrape_token(settings.bearer_token_file)
    if expected is not None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, b"Bearer " + expected):
            raise errors.Unauthorized("This endpoint needs the metrics scrape token")
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
