"""The provider's documentation page (``plugins/docs.py``): the real FastAPI app over the
packaged README, and its registration with Airflow (provider info, entry point, metadata).

The browser test (``browser/test_airflow_ui.py``) follows the link from Admin > Providers
to this page in the running API server.
"""

from __future__ import annotations

import re
from importlib.metadata import distribution
from importlib.resources import files

from fastapi.testclient import TestClient

from airflow_provider_hpc.get_provider_info import NAME, get_provider_info
from airflow_provider_hpc.plugins.docs import DOCS_URL, URL_PREFIX, HpcProviderPlugin, create_app


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
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None  # the one inline style is allowed by its hash only
    assert client.get("/", follow_redirects=False).headers["location"] == "docs/"


def test_raw_html_in_markdown_is_escaped() -> None:
    from markdown_it import MarkdownIt

    from airflow_provider_hpc.plugins import docs

    assert docs.render_page.__wrapped__  # the page is rendered once per process
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    out = renderer.render('<script>alert(1)</script>\n\n[x](javascript:alert(1))\n')
    assert "<script>" not in out and 'href="javascript:' not in out


def test_registered_where_airflow_looks() -> None:
    [plugin] = get_provider_info()["plugins"]
    assert plugin["plugin-class"].endswith(f".{HpcProviderPlugin.__name__}")
    [app] = HpcProviderPlugin.fastapi_apps
    assert app["url_prefix"] == URL_PREFIX and DOCS_URL == "hpc-provider/docs/"
    dist = distribution("hpcgate")
    plugins = [e for e in dist.entry_points if e.group == "airflow.plugins"]
    assert [e.value for e in plugins] == ["airflow_provider_hpc.plugins.docs:HpcProviderPlugin"]
    urls = dict(u.split(", ", 1) for u in dist.metadata.get_all("Project-URL") or [])
    assert urls.get("Documentation") == DOCS_URL
    assert files("airflow_provider_hpc").joinpath("README.md").is_file()
