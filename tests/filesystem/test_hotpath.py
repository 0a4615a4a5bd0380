"""The lean path of the hot GETs (``hpcgate.api.hotpath``) answers exactly as FastAPI.

Each request is sent twice to the real server on the real site: in its plain form,
which the lean path serves, and with one extra query parameter it does not know,
which it leaves to FastAPI (which ignores it). Status, body bytes and headers must be
the same, errors included; a counter on the lean path proves which one answered.
"""

from __future__ import annotations

import asyncio
import shlex
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hpcgate.api import hotpath
from tests.filesystem.conftest import FsServer

pytestmark = [pytest.mark.site, pytest.mark.e2e]

_VOLATILE = {"x-request-id", "date"}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the lean path answered (the test server runs in this process)."""
    paths: list[str] = []
    serve = hotpath.HotPathMiddleware._serve

    async def counting(self: Any, hot: Any, params: Any, query: Any, scope: Any, *rest: Any):
        paths.append(scope["path"])
        return await serve(self, hot, params, query, scope, *rest)

    monkeypatch.setattr(hotpath.HotPathMiddleware, "_serve", counting)
    return paths


@pytest.fixture
def client(fs_server: FsServer) -> Iterator[Any]:
    clients: dict[str, httpx.Client] = {}

    def get(user: str) -> httpx.Client:
        if user not in clients:
            headers = {"Authorization": f"Bearer {fs_server.token(user)}"}
            clients[user] = httpx.Client(base_url=fs_server.url, headers=headers, timeout=60)
        return clients[user]

    yield get
    for each in clients.values():
        each.close()


def _same(
    client: httpx.Client, url: str, served: list[str], params: dict[str, str] | None = None
) -> httpx.Response:
    """GET ``url`` by the lean path and by FastAPI; assert both answer alike."""
    params = params or {}
    before = len(served)
    lean = client.get(url, params=params)
    assert len(served) == before + 1, f"the lean path did not answer {url} {params}"
    full = client.get(url, params={**params, "unknownParameter": "1"})
    assert len(served) == before + 1, "FastAPI's answer went through the lean path"
    assert (lean.status_code, lean.content) == (full.status_code, full.content)
    lean_headers = [(k, v) for k, v in lean.headers.multi_items() if k not in _VOLATILE]
    full_headers = [(k, v) for k, v in full.headers.multi_items() if k not in _VOLATILE]
    assert lean_headers == full_headers
    return lean


async def test_stat_and_ls_as_fastapi(fs_server, client, served, workdir, sftp_as) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    for name in ("b.txt", "a b é.txt", ".hidden"):
        async with sftp.open(f"{base}/{name}", "wb", encoding=None) as handle:
            await handle.write(b"12345")
    await sftp.mkdir(f"{base}/sub")
    await sftp.symlink("b.txt", f"{base}/link")
    ops = f"/filesystem/{fs_server.system}/ops"
    alice, bob = client("hpcuser1"), client("hpcuser2")

    def same(user: httpx.Client, route: str, **params: str) -> httpx.Response:
        return _same(user, f"{ops}/{route}", served, params)

    assert same(alice, "stat", path=f"{base}/b.txt").json()["output"]["size"] == 5
    assert same(alice, "stat", path=f"{base}/link", dereference="true").status_code == 200
    assert same(alice, "stat", path=f"{base}/link", dereference="").status_code == 200
    assert same(alice, "stat", path=f"{base}/missing").status_code == 404
    assert same(alice, "stat", path="relative/path").status_code == 400
    listing = same(alice, "ls", path=base).json()["output"]
    assert [f["name"] for f in listing] == ["a b é.txt", "b.txt", "link", "sub"]
    hidden = same(alice, "ls", path=base, showHidden="true", numericUid="1").json()["output"]
    assert ".hidden" in [f["name"] for f in hidden]
    same(alice, "ls", path=base, recursive="true", dereference="false")
    same(alice, "ls", path=f"{base}/b.txt")
    # another user's private directory: the path policy and SFTP refuse alike
    await sftp.chmod(base, 0o700)
    assert same(bob, "ls", path=base).status_code in (403, 404)
    assert same(bob, "stat", path=f"{base}/b.txt").status_code in (403, 404)
    # an unknown system: 404 from the same check
    _same(alice, "/filesystem/no-such-system/ops/stat", served, {"path": f"{base}/b.txt"})


def test_unusual_queries_go_to_fastapi(fs_server, client, served) -> None:
    ops = f"/filesystem/{fs_server.system}/ops"
    alice = client("hpcuser1")
    for params in (
        {"path": "/tmp", "dereference": "yes"},  # a boolean FastAPI reads, not the lean path
        {"path": ""},
        {},
        {"path": "/tmp", "showHidden": "maybe"},
    ):
        before = len(served)
        route = "ls" if "showHidden" in params else "stat"
        response = alice.get(f"{ops}/{route}", params=params)
        assert len(served) == before, params
        assert response.status_code in (200, 400, 403, 404), response.text
    assert (
        alice.get(f"{ops}/stat", params={"path": "/tmp", "dereference": "maybe"}).json()[
            "errorType"
        ]
        == "validation"
    )
    # no token: the edge answers before either path
    before = len(served)
    assert httpx.get(f"{fs_server.url}{ops}/stat", params={"path": "/tmp"}).status_code == 401
    assert len(served) == before


async def test_job_as_fastapi(fs_server, client, served, ssh_as, site_env) -> None:
    conn = await ssh_as("hpcuser1")
    argv = ["sbatch", "--parsable", "--job-name=hotpath", "--output=/dev/null"]
    result = await conn.run(shlex.join(argv), input="#!/bin/bash\ntrue\n", check=True)
    job_id = str(result.stdout).strip()
    alice, bob = client("hpcuser1"), client("hpcuser2")
    path = f"/compute/{fs_server.system}/jobs/{job_id}"
    for _ in range(100):  # until the job has ended: then both answers are the same
        answer = alice.get(path)
        assert answer.status_code == 200, answer.text
        if answer.json()["jobs"][0]["status"]["state"] in ("COMPLETED", "FAILED"):
            break
        await asyncio.sleep(0.3)
    answer = _same(alice, path, served)
    assert answer.json()["jobs"][0]["jobId"] == job_id
    assert _same(bob, path, served).status_code == 404  # another user's job, as unknown
    assert _same(alice, f"/compute/{fs_server.system}/jobs/999999999", served).status_code == 404
    assert _same(alice, f"/compute/{fs_server.system}/jobs/x;id", served).status_code == 400
    # waitFor is not the plain GET's (hotpath_events serves it: tests/events/test_hotpath_events.py)
    before = len(served)
    waited = alice.get(path, params={"waitFor": "terminal", "timeout": "5"})
    assert waited.status_code == 200 and len(served) == before


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The submissions the lean path took (it may still hand a bad body to FastAPI)."""
    paths: list[str] = []
    submit = hotpath.HotPathMiddleware._submit_job

    async def counting(self: Any, route: Any, params: Any, key: Any, scope: Any, *rest: Any):
        paths.append(scope["path"])
        return await submit(self, route, params, key, scope, *rest)

    monkeypatch.setattr(hotpath.HotPathMiddleware, "_submit_job", counting)
    return paths


def _post_both(
    client: httpx.Client, url: str, submitted: list[str], **kwargs: Any
) -> tuple[httpx.Response, httpx.Response]:
    """POST by the lean path, then by FastAPI (an unknown query parameter)."""
    before = len(submitted)
    lean = client.post(url, **kwargs)
    assert len(submitted) == before + 1, f"the lean path did not take {url}"
    full = client.post(url, params={"unknownParameter": "1"}, **kwargs)
    assert len(submitted) == before + 1, "FastAPI's answer went through the lean path"
    return lean, full


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    volatile = _VOLATILE | {"content-length"}  # job ids may differ in length
    return [(k, v) for k, v in response.headers.multi_items() if k not in volatile]


def _alike(lean: httpx.Response, full: httpx.Response) -> None:
    """Same status, headers and bytes (errors), or the same shape (a new job each)."""
    assert lean.status_code == full.status_code, (lean.text, full.text)
    assert _headers(lean) == _headers(full)
    if lean.status_code == 201:
        assert lean.json().keys() == full.json().keys() == {"jobId"}
        assert lean.json()["jobId"].isdigit() and full.json()["jobId"].isdigit()
    else:
        assert lean.content == full.content


async def test_submission_as_fastapi(fs_server, client, submitted, ssh_as, site_env) -> None:
    name = "hotpath-submit"
    alice, bob = client("hpcuser1"), client("hpcuser2")
    url = f"/compute/{fs_server.system}/jobs"

    def job(script: str = "#!/bin/bash\n#SBATCH --hold\ntrue\n", **extra: Any) -> dict[str, Any]:
        scratch = site_env.scratch("hpcuser1")
        fields = {"name": name, "workingDirectory": scratch, "standardOutput": "/dev/null"}
        return {"job": {**fields, "script": script, **extra}}

    try:
        lean, full = _post_both(alice, url, submitted, json=job())
        _alike(lean, full)
        assert lean.status_code == 201 and lean.json()["jobId"] != full.json()["jobId"]
        # a body that does not validate: the lean path hands the bytes to FastAPI, whose
        # RequestValidationError the app answers (400, errorType validation)
        for body in (
            {"job": {"script": "true"}},  # no working directory
            {"job": {**job()["job"], "tasks": 0}},
            {"job": {**job()["job"], "extraOptions": {"test-only": None}}},
            [],
        ):
            lean, full = _post_both(alice, url, submitted, json=body)
            _alike(lean, full)
            assert lean.status_code == 400, lean.text
        for raw in (b"{", b'{"job": {"script": "\xff"}}', b"", b"null", b'{"job":1} x'):
            headers = {"Content-Type": "application/json"}
            lean, full = _post_both(alice, url, submitted, content=raw, headers=headers)
            _alike(lean, full)
            assert lean.status_code == 400, lean.text
        assert "There was an error parsing the body" in lean.text or "JSON" in lean.text
        # a directive sbatch must not obey: 400, nothing submitted
        for directive in ("--test-only", "--wait"):
            script = f"#!/bin/bash\n#SBATCH {directive}\ntrue\n"
            lean, full = _post_both(alice, url, submitted, json=job(script))
            _alike(lean, full)
            assert lean.status_code == 400, lean.text
        # an unknown system: the same 404
        lean, full = _post_both(alice, "/compute/no-such-system/jobs", submitted, json=job())
        _alike(lean, full)
        assert lean.status_code == 404
        # idempotency: a replay answers the first job, by either path, per user
        key = {"Idempotency-Key": f"hotpath-{uuid.uuid4().hex}"}
        first, replay = _post_both(alice, url, submitted, json=job(), headers=key)
        assert first.status_code == replay.status_code == 201, (first.text, replay.text)
        assert first.json() == replay.json()
        again = alice.post(url, json=job(), headers=key)
        assert again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == replay.headers["Idempotent-Replayed"]
        assert _headers(again) == _headers(replay)
        lean, full = _post_both(
            alice, url, submitted, json=job("#!/bin/bash\nfalse\n"), headers=key
        )
        _alike(lean, full)  # the same key with another body
        assert lean.status_code == 422
        bob_job = bob.post(
            url, json=job() | {"job": {**job()["job"], "workingDirectory": "/tmp"}}, headers=key
        )
        assert bob_job.status_code == 201 and bob_job.json() != first.json()
        assert "Idempotent-Replayed" not in bob_job.headers
    finally:
        for user in ("hpcuser1", "hpcuser2"):
            conn = await ssh_as(user)
            await conn.run(shlex.join(["scancel", f"--name={name}"]), check=False)


def test_submission_body_caps(fs_server, client, submitted) -> None:
    """Over ``http.max_json_body_bytes``: 413 from the edge, declared or chunked."""
    alice = client("hpcuser1")
    url = f"/compute/{fs_server.system}/jobs"
    cap = fs_server.settings.http.max_json_body_bytes
    body = b'{"job": {"script": "' + b"x" * cap + b'"}}'
    headers = {"Content-Type": "application/json"}
    before = len(submitted)
    declared = alice.post(url, content=body, headers=headers)
    assert declared.status_code == 413 and len(submitted) == before  # the edge, before

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    answers = []
    for params in ({}, {"unknownParameter": "1"}):
        answers.append(alice.post(url, content=chunks(), headers=headers, params=params))
    assert len(submitted) == before + 1  # the lean path read the chunked body
    lean, full = answers
    assert lean.status_code == full.status_code == 413
    assert lean.content == full.content
    assert lean.headers["connection"] == "close"
