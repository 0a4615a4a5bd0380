"""The provider's Airflow plugin (``plugins/``): the documentation page (the real FastAPI
app over the packaged README), the Test button middleware, and their registration with
Airflow (provider info, entry point, package metadata).

The browser test (``browser/test_airflow_ui.py``) follows the link from Admin > Providers
to the page and presses the Test button in the running API server.
"""

from __future__ import annotations

import json
from importlib.metadata import distribution
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from airflow_provider_hpc.get_provider_info import NAME, get_provider_info
from airflow_provider_hpc.plugins.docs import DOCS_URL, URL_PREFIX, create_app, render_markdown
from airflow_provider_hpc.plugins.provider import HpcProviderPlugin
from airflow_provider_hpc.plugins.test_button import (
    MAX_BODY,
    TEST_PATH,
    HpcTestButtonMiddleware,
    drop_port_zero,
)


def test_the_page_is_the_readme_rendered_without_scripts() -> None:
    client = TestClient(create_app())
    answer = client.get("/docs/")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert f"<title>{NAME} — Airflow provider (hpcgate 0.1.0)</title>" in page
    assert "<h2>Connection (<code>conn_type</code> <code>hpc</code>" in page
    assert "<table>" in page and "<td>API URL</td>" in page  # the README's tables render
    # the README's angle brackets (`<token>`, `<scratch>/<user>`) stay text
    assert "&lt;token&gt;" in page and "<token>" not in page
    assert "<script" not in page.lower()
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "'unsafe" not in csp
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert client.get("/", follow_redirects=False).headers["location"] == "docs/"


def test_raw_html_in_markdown_is_escaped() -> None:
    out = render_markdown("<script>alert(1)</script>\n\n[x](javascript:alert(1)) <b>b</b>\n")
    assert "<script>" not in out and "<b>" not in out and 'href="javascript:' not in out
    assert "&lt;script&gt;" in out


def test_registered_where_airflow_looks() -> None:
    [plugin] = get_provider_info()["plugins"]
    assert plugin["plugin-class"].endswith(f".{HpcProviderPlugin.__name__}")
    [app] = HpcProviderPlugin.fastapi_apps
    assert app["url_prefix"] == URL_PREFIX and DOCS_URL == "hpc-provider/docs/"
    [middleware] = HpcProviderPlugin.fastapi_root_middlewares
    assert middleware["middleware"] is HpcTestButtonMiddleware
    dist = distribution("hpcgate")
    plugins = [e for e in dist.entry_points if e.group == "airflow.plugins"]
    assert [e.value for e in plugins] == ["airflow_provider_hpc.plugins.provider:HpcProviderPlugin"]
    urls = dict(u.split(", ", 1) for u in dist.metadata.get_all("Project-URL") or [])
    assert urls.get("Documentation") == DOCS_URL
    assert files("airflow_provider_hpc").joinpath("README.md").is_file()


def test_drop_port_zero_only_for_hpc_and_zero() -> None:
    def body(**kw: Any) -> bytes:
        return json.dumps({"connection_id": "c", "conn_type": "hpc", **kw}).encode()

    assert json.loads(drop_port_zero(body(port=0, host="h")) or b"") == {
        "connection_id": "c",
        "conn_type": "hpc",
        "host": "h",
    }
    assert drop_port_zero(body(port=8000)) is None
    assert drop_port_zero(body()) is None
    assert drop_port_zero(body(port=False)) is None
    assert drop_port_zero(body(port=0, conn_type="http")) is None
    assert drop_port_zero(b"not json") is None
    assert drop_port_zero(b"[0]") is None


def _echo_client() -> TestClient:
    """A FastAPI app behind the middleware that answers with the body it received."""
    app = FastAPI()

    @app.post("/{path:path}")
    async def echo(request: Request) -> dict[str, Any]:
        raw = await request.body()
        return {"length": request.headers.get("content-length"), "body": raw.decode()}

    app.add_middleware(HpcTestButtonMiddleware)
    return TestClient(app)


def test_the_middleware_rewrites_only_hpc_test_requests() -> None:
    client = _echo_client()
    sent = {"connection_id": "hpc_default", "conn_type": "hpc", "host": "h", "port": 0}
    got = client.post(TEST_PATH, json=sent).json()
    assert json.loads(got["body"]) == {k: v for k, v in sent.items() if k != "port"}
    assert int(got["length"]) == len(got["body"])
    # another route, another type, another port: untouched
    for path, body in (
        ("/api/v2/connections", sent),
        (TEST_PATH, {**sent, "conn_type": "http"}),
        (TEST_PATH, {**sent, "port": 8000}),
    ):
        got = client.post(path, json=body).json()
        assert json.loads(got["body"]) == body, (path, body)
    # a body over the bound is passed on whole and unparsed
    big = {**sent, "description": "x" * (MAX_BODY + 10)}
    got = client.post(TEST_PATH, json=big).json()
    assert json.loads(got["body"]) == big
