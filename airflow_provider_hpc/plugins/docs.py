"""The provider's documentation page, served by Airflow's API server.

Admin > Providers links a provider's name to its package's ``Documentation`` project URL.
hpcgate has no public home yet, so that URL is relative (:data:`DOCS_URL`): the UI
resolves it against its own base URL, where this app serves the README
shipped in the package. The page is static and public (it is the package's own text):
rendered once per process, raw HTML in the Markdown escaped, no scripts (CSP).
:class:`~airflow_provider_hpc.plugins.provider.HpcProviderPlugin` mounts the app.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
from importlib import metadata, resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from markdown_it import MarkdownIt

from airflow_provider_hpc.get_provider_info import NAME

#: Where the plugin's app is mounted, below the API server's root.
URL_PREFIX = "/hpc-provider"
#: The package's ``Documentation`` project URL: relative, so that it resolves against
#: the Airflow UI's base URL (``<base href>``), also when Airflow runs below a path.
DOCS_URL = URL_PREFIX.lstrip("/") + "/docs/"
DISTRIBUTION = "hpcgate"

_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "color:#1a202c}code,pre{font:13px ui-monospace,monospace;background:#f4f5f7}"
    "pre{padding:.75rem;overflow-x:auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #d0d4da;padding:.25rem .5rem;vertical-align:top}"
    "header{color:#4a5568;border-bottom:1px solid #d0d4da;margin-bottom:1rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
#: No script, no remote resource, no form, not framed by other sites.
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self' https: data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "public, max-age=3600",
}


def render_markdown(text: str) -> str:
    """CommonMark plus tables; raw HTML is escaped, ``javascript:`` links are not made."""
    html_text: str = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return html_text


@functools.cache
def render_page() -> str:
    """The README as a complete HTML page."""
    readme = resources.files("airflow_provider_hpc").joinpath("README.md").read_text("utf-8")
    title = html.escape(
        f"{NAME} — Airflow provider ({DISTRIBUTION} {metadata.version(DISTRIBUTION)})"
    )
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head>\n"
        f"<body><header>{title}</header>\n<main>{render_markdown(readme)}</main></body></html>\n"
    )


def create_app() -> FastAPI:
    """``GET docs/``: the page; ``GET /``: a redirect to it."""
    app = FastAPI(title=f"{NAME} provider documentation", openapi_url=None, docs_url=None)

    @app.get("/docs/", response_class=HTMLResponse)
    def documentation() -> HTMLResponse:
        return HTMLResponse(render_page(), headers=HEADERS)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("docs/")

    return app
