"""Job pages a person can open in a browser: a signed link instead of a bearer token.

``POST /compute/{system}/jobs/{id}/page-link`` (authenticated) mints, for the job's
owner only, ``/job-pages/{system}/{id}?user=..&stdout=..&stderr=..&expires=..&signature=..``:
HMAC-signed with the transfer URL key (``hpcgate.transfer.signing``), bound to the
method, path, system, job, user and the output paths the scheduler gave at minting,
read-only and expiring (``job_page.link_ttl_seconds``). The page (public at the edge:
the signature is its credential, checked before anything else) shows the job as that
user sees it, through the scheduler and filesystem interfaces, as escaped HTML without
scripts. A site with its own portal sets ``job_page.url_template``: the mint answers
that URL and no page is served. The paths are in the URL because Slurm forgets them a
few minutes after the job ends, and the link must work after that.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from hpcgate import errors
from hpcgate.api.dependencies import SystemDep, get_services
from hpcgate.compute.jobpage import (
    PAGE_HEADERS,
    JobPage,
    OutputPaths,
    PageCache,
    find_job,
    gather,
    output_paths,
    render_message,
    render_page,
)
from hpcgate.compute.jobs import validate_job_id
from hpcgate.compute.scheduler.models import JobMetadata
from hpcgate.config import JobPageSettings, Settings
from hpcgate.services import Services
from hpcgate.transfer.signing import Binding, UrlSigner
from hpcgate.wire import WireModel

PAGE_PATH = "/job-pages/{system}/{job_id}"
_PURPOSE = "job-page"
_MAX_PATH = 4096
_MAX_USER = 32

links = APIRouter(prefix="/compute/{system_name}", tags=["compute"])
pages = APIRouter(tags=["job pages"])


class JobPageLink(WireModel):
    """A URL a person can open for the job, and until when it works (None: a portal's)."""

    url: str
    expires_at: datetime | None = None


def _signer(services: Services) -> UrlSigner:
    """The transfer URL signer (one key for every signed URL of this server)."""
    if services.transfers is None:
        raise errors.ServiceUnavailable("Signed links are not available on this server")
    return services.transfers.signer


def _binding(system: str, job_id: str, user: str, paths: OutputPaths) -> Binding:
    return Binding(
        transfer_id=_PURPOSE, user=user, system=system, target=job_id, fingerprint=paths.encoded()
    )


def _base_url(settings: Settings, request: Request) -> str:
    page = settings.job_page
    return page.public_url or settings.transfer.public_url or str(request.base_url).rstrip("/")


def _enabled(page: JobPageSettings) -> None:
    if not page.enabled:
        raise errors.NotFound("Job pages are disabled on this server")


@links.post("/jobs/{job_id}/page-link", response_model=JobPageLink)
async def mint_page_link(ctx: SystemDep, job_id: str, request: Request) -> JobPageLink:
    """A link to a browser page of the job (state, times, exit code, output tails) that
    needs no token: signed for the caller, who must own the job, and expiring after
    `job_page.link_ttl_seconds`; or the site portal's URL (`job_page.url_template`)."""
    settings = ctx.services.settings
    page = settings.job_page
    _enabled(page)
    job_id = validate_job_id(job_id)
    ctx.ensure_healthy("scheduler")
    watcher = ctx.services.watchers.get(ctx.name)
    cached = watcher.cached(ctx.username, job_id) if watcher is not None else None
    job = await find_job(
        ctx.scheduler, ctx.runner, job_id, ctx.username, cached.job if cached else None
    )
    if page.url_template is not None:
        values = {"system": ctx.name, "job_id": job_id, "user": ctx.username}
        url = page.url_template.format(**{k: quote(v, safe="") for k, v in values.items()})
        return JobPageLink(url=url)
    try:
        metadata = await ctx.scheduler.metadata(ctx.runner, job_id)
    except (errors.NotFound, errors.Forbidden):
        metadata = JobMetadata(job_id=job_id)
    paths = output_paths(metadata, job)
    expires = int(time.time()) + page.link_ttl_seconds
    path = PAGE_PATH.format(system=quote(ctx.name, safe=""), job_id=job_id)
    signed = _signer(ctx.services).query(
        "GET", path, _binding(ctx.name, job_id, ctx.username, paths), expires=expires
    )
    fields = {"user": ctx.username, "stdout": paths.stdout, "stderr": paths.stderr}
    query = urlencode({k: v for k, v in fields.items() if v is not None})
    return JobPageLink(
        url=f"{_base_url(settings, request)}{path}?{query}&{signed}",
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


def _html(status: int, body: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def _cache(request: Request, page: JobPageSettings) -> PageCache:
    cache: PageCache | None = getattr(request.app.state, "job_page_cache", None)
    if cache is None:
        cache = request.app.state.job_page_cache = PageCache(page.cache_seconds)
    return cache


_INVALID = (
    "This job link is not valid",
    "It was altered, cut short, or signed by a different server. Open the job again "
    "from the task's “HPC Job” link in Airflow, or ask the API for a new link "
    "(POST /compute/{system}/jobs/{id}/page-link).",
)


@pages.get(PAGE_PATH, response_class=HTMLResponse)
async def job_page(system: str, job_id: str, request: Request) -> HTMLResponse:
    """The job page of a signed link (HTML). 403: not a valid link; 410: expired; 404:
    no such job (or not the link user's); 503: the scheduler is down."""
    services = get_services(request)
    settings = services.settings
    page = settings.job_page
    query = request.query_params
    user = query.get("user") or ""
    paths = OutputPaths(query.get("stdout"), query.get("stderr"))
    expires_text = query.get("expires") or ""
    system_settings = settings.system(system)
    if (
        not page.enabled
        or page.url_template is not None
        or system_settings is None
        or not expires_text.isdigit()
        or len(expires_text) > 12
        or not 0 < len(user) <= _MAX_USER
        or any(p is not None and len(p) > _MAX_PATH for p in (paths.stdout, paths.stderr))
    ):
        return _html(403, render_message(*_INVALID))
    expires = int(expires_text)
    try:
        _signer(services).verify(
            "GET",
            PAGE_PATH.format(system=quote(system, safe=""), job_id=job_id),
            _binding(system, job_id, user, paths),
            expires=expires,
            signature=query.get("signature"),
        )
    except errors.ApiError:
        return _html(403, render_message(*_INVALID))
    name = system_settings.name
    request.state.user, request.state.system = user, name
    if expires < time.time():
        ended = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
        days = page.link_ttl_seconds / 86400
        return _html(
            410,
            render_message(
                "This job link has expired",
                f"The link to job {job_id} on {name} worked until {ended}: links are "
                f"valid for {days:g} days after they are made (job_page.link_ttl_seconds).",
                "To see the job now: if the Airflow task ran recently, open its “HPC Job” "
                "link again; otherwise the task's log shows the job's output, and the API "
                f"gives a new link to the job's owner: POST /compute/{name}/jobs/{job_id}"
                "/page-link.",
            ),
        )
    key = (name, job_id, user, paths, expires)
    status, body = await _cache(request, page).get(
        key, lambda: _render(services, name, job_id, user, paths, expires)
    )
    headers = {"Retry-After": "30"} if status == 503 else None
    return _html(status, body, headers)


async def _render(
    services: Services, system: str, job_id: str, user: str, paths: OutputPaths, expires: int
) -> tuple[int, str]:
    """(status, page) of the job as ``user`` sees it; errors as explained pages."""
    page = services.settings.job_page
    try:
        job_id = validate_job_id(job_id)
        await services.accounts[system].check(user)
        services.health.ensure_healthy(system, "scheduler")
        watcher = services.watchers.get(system)
        cached = watcher.cached(user, job_id) if watcher is not None else None
        runner = services.runner(system, user)
        job = await find_job(
            services.schedulers[system], runner, job_id, user, cached.job if cached else None
        )
        filesystem = services.filesystem(system, user)

        async def read_tail(path: str) -> str:
            services.health.ensure_healthy(system, "filesystem")
            content = await filesystem.tail(path, bytes_=page.output_bytes)
            return content.content

        stdout, stderr = await gather(job, paths, read_tail, lines=page.output_lines)
    except errors.ApiError as exc:
        title = {
            403: "This link's account may not use the system",
            404: "Job not found",
            503: "The cluster is not answering right now",
        }.get(exc.status_code, "The job could not be shown")
        return exc.status_code, render_message(title, exc.message, "Try again in a minute.")
    return 200, render_page(JobPage(system, user, job, stdout, stderr, expires))
