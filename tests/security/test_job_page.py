"""The browser job page: a signed link opens without a token, shows only the owner's
job as the owner sees it, escapes what the job printed, and refuses anything altered.

Against the real server and site: hpcuser1 owns the job (its name and output are
hostile HTML), hpcuser2 tries to mint or forge links to it. The server's signing key is
configured so the test can sign links the server did not hand out (expired ones, or
one naming hpcuser2) and show that the server's own checks, not the minting alone,
refuse them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from hpcgate.compute.jobpage import OutputPaths, PageCache, render_message
from hpcgate.transfer.signing import Binding, UrlSigner
from tests.api.helpers import submit, wait_final
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

KEY = "job-page-test-key-" + "k" * 32
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SCRIPT = f"""#!/bin/bash
echo 'page-stdout-line {HOSTILE}'
printf 'bell\\a escape\\033[31m red\\n'
echo 'page-stderr-line &amp; <b>' >&2
exit 3
"""


@pytest.fixture(scope="module")
def server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    api = start_server(
        site_env,
        tmp_path_factory.mktemp("job-page"),
        settings_overrides={"transfer": {"signing_key": KEY}},
    )
    yield api
    api.stop()


@pytest.fixture(scope="module")
def job(server: ApiServer, site_env: SiteEnv) -> str:
    with server.client("hpcuser1") as client:
        job_id = submit(
            client,
            server.system,
            {
                "name": f"<b>page</b>-{uuid.uuid4().hex[:6]}",
                "workingDirectory": site_env.scratch("hpcuser1"),
                "script": SCRIPT,
                "standardOutput": f"{site_env.scratch('hpcuser1')}/page-%j.out",
                "standardError": f"{site_env.scratch('hpcuser1')}/page-%j.err",
            },
        )
        wait_final(client, server.system, job_id)
    return job_id


def _mint(server: ApiServer, job_id: str, user: str = "hpcuser1") -> httpx.Response:
    with server.client(user) as client:
        return client.post(f"/compute/{server.system}/jobs/{job_id}/page-link")


def _link(server: ApiServer, job_id: str) -> str:
    response = _mint(server, job_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["url"].startswith(f"{server.url}/job-pages/{server.system}/{job_id}?")
    assert body["expiresAt"]
    return str(body["url"])


def _open(url: str) -> httpx.Response:
    """As a browser would: no Authorization header."""
    return httpx.get(url, timeout=60)


def _with(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return parts._replace(query=urlencode(query)).geturl()


def _assert_no_job_data(response: httpx.Response) -> None:
    assert "page-stdout-line" not in response.text
    assert "page-stderr-line" not in response.text


def test_the_owner_link_opens_without_a_token_and_escapes_everything(
    server: ApiServer, job: str
) -> None:
    response = _open(_link(server, job))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = response.text
    assert f"Job {job} on {server.system}" in page
    assert "FAILED" in page and ">3<" in page  # state and exit code
    assert "page-stdout-line" in page and "page-stderr-line" in page
    # what the job printed and its name are text, never markup
    assert "<script" not in page and "<img" not in page and "<b>page" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;page&lt;/b&gt;" in page
    assert "&amp;amp;" in page
    assert "\x1b" not in page and "\x07" not in page
    assert "Authorization" not in page


def test_only_the_owner_can_mint_and_unauthenticated_minting_costs_nothing(
    server: ApiServer, job: str
) -> None:
    other = _mint(server, job, user="hpcuser2")
    assert other.status_code == 404, other.text
    assert other.json()["message"] == f"Job not found: {job}"
    anonymous = httpx.post(f"{server.url}/compute/{server.system}/jobs/{job}/page-link")
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    "changes",
    [
        {"user": "hpcuser2"},
        {"stdout": "/etc/passwd"},
        {"stderr": None},
        {"signature": None},
        {"signature": "0" * 64},
        {"expires": str(int(time.time()) + 10 * 365 * 86400)},
        {"expires": "soon"},
    ],
    ids=["user", "stdout", "stderr", "no-signature", "zero-signature", "expiry", "bad-expiry"],
)
def test_an_altered_link_is_refused_and_shows_nothing(
    server: ApiServer, job: str, changes: dict[str, str | None]
) -> None:
    response = _open(_with(_link(server, job), **changes))
    assert response.status_code == 403, response.text
    assert "This job link is not valid" in response.text
    _assert_no_job_data(response)


def test_another_job_id_or_system_in_the_path_is_refused(server: ApiServer, job: str) -> None:
    url = _link(server, job)
    for path in (
        f"/job-pages/{server.system}/{int(job) - 1}",
        f"/job-pages/elsewhere/{job}",
        f"/job-pages/{server.system.upper()}/{job}",
    ):
        response = _open(url.replace(f"/job-pages/{server.system}/{job}", path))
        assert response.status_code == 403, (path, response.text)
        _assert_no_job_data(response)


def _signed(server: ApiServer, job_id: str, user: str, paths: OutputPaths, expires: int) -> str:
    """A link signed with the server's key, as the server would if it minted it."""
    path = f"/job-pages/{server.system}/{job_id}"
    binding = Binding("job-page", user, server.system, job_id, paths.encoded())
    signed = UrlSigner(KEY.encode()).query("GET", path, binding, expires=expires)
    fields = {"user": user, "stdout": paths.stdout, "stderr": paths.stderr}
    query = urlencode({k: v for k, v in fields.items() if v is not None})
    return f"{server.url}{path}?{query}&{signed}"


def test_an_expired_link_says_what_to_do(server: ApiServer, job: str) -> None:
    query = dict(parse_qsl(urlsplit(_link(server, job)).query))
    paths = OutputPaths(query.get("stdout"), query.get("stderr"))
    response = _open(_signed(server, job, "hpcuser1", paths, int(time.time()) - 5))
    assert response.status_code == 410, response.text
    assert "This job link has expired" in response.text
    assert "HPC Job" in response.text and "/page-link" in response.text
    _assert_no_job_data(response)


def test_a_validly_signed_link_for_someone_else_shows_nothing_of_the_owner(
    server: ApiServer, job: str, site_env: SiteEnv
) -> None:
    """Even a link the server would sign for hpcuser2 (e.g. minted before a job id was
    reused) shows hpcuser1's job as unknown: the owner is checked when the page opens."""
    out = f"{site_env.scratch('hpcuser1')}/page-{job}.out"
    expires = int(time.time()) + 600
    response = _open(_signed(server, job, "hpcuser2", OutputPaths(out, out), expires))
    assert response.status_code == 404, response.text
    assert "Job not found" in response.text
    _assert_no_job_data(response)


def test_messages_escape_their_text() -> None:
    page = render_message("<t>", "<p onclick=x>")
    assert "<t>" not in page and "<p onclick" not in page and "&lt;p onclick=x&gt;" in page


async def test_one_link_is_rendered_once_per_cache_period_however_often_opened() -> None:
    """A link is public to its holder: 50 concurrent opens cost one render."""
    renders = 0

    async def render() -> tuple[int, str]:
        nonlocal renders
        renders += 1
        await asyncio.sleep(0.05)
        return 200, "page"

    cache = PageCache(ttl=60)
    answers = await asyncio.gather(*(cache.get("link", render) for _ in range(50)))
    assert renders == 1 and set(answers) == {(200, "page")}
    await cache.get("other link", render)
    assert renders == 2
    uncached = PageCache(ttl=0)
    await uncached.get("link", render)
    await uncached.get("link", render)
    assert renders == 4
