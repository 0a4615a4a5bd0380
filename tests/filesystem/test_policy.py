"""The path policy through the API: refusals, escapes, isolation, hostile names."""

from __future__ import annotations

import os
import uuid

import asyncssh
import httpx
import pytest

pytestmark = [pytest.mark.site, pytest.mark.e2e]


def requests_for(path: str, base: str) -> list[tuple[str, str, dict]]:
    """One request per endpoint with ``path`` in its path argument."""
    return [
        ("GET", "/ls", {"params": {"path": path}}),
        ("GET", "/stat", {"params": {"path": path}}),
        ("GET", "/head", {"params": {"path": path}}),
        ("GET", "/tail", {"params": {"path": path}}),
        ("GET", "/view", {"params": {"path": path}}),
        ("GET", "/checksum", {"params": {"path": path}}),
        ("GET", "/file", {"params": {"path": path}}),
        ("GET", "/download", {"params": {"path": path}}),
        ("DELETE", "/rm", {"params": {"path": path}}),
        ("POST", "/mkdir", {"json": {"path": path, "parent": True}}),
        ("POST", "/symlink", {"json": {"path": f"{base}/x", "linkPath": path}}),
        ("POST", "/symlink", {"json": {"path": path, "linkPath": f"{base}/y"}}),
        ("PUT", "/chmod", {"json": {"path": path, "mode": "777"}}),
        ("PUT", "/chown", {"json": {"path": path, "group": "project1"}}),
        ("POST", "/upload", {"params": {"path": path}, "files": {"file": ("f", b"x")}}),
        ("POST", "/compress", {"json": {"path": f"{base}/x", "targetPath": path}}),
        ("POST", "/compress", {"json": {"path": path, "targetPath": f"{base}/a.tgz"}}),
        ("POST", "/extract", {"json": {"path": path, "targetPath": base}}),
        ("POST", "/extract", {"json": {"path": f"{base}/a.tgz", "targetPath": path}}),
    ]


MALFORMED = {
    "dotdot": "{base}/../../../../../../etc",
    "dotdot-inside": "{base}/sub/../other",
    "nul": "{base}/a\x00b",
    "newline": "{base}/a\nb",
    "ten-kib": "{base}/" + "a" * 10240,
    "relative": "relative/path",
    "tilde": "~/x",
    "empty": "",
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_paths_are_400_without_touching_the_cluster(api, fs_server, workdir, case):
    base = workdir["hpcuser1"]
    path = MALFORMED[case].format(base=base)
    before = fs_server.calls("hpcuser1")
    for method, url, kwargs in requests_for(path, base):
        response = api["hpcuser1"].request(method, url, **kwargs)
        assert response.status_code == 400, (method, url, response.text)
        assert len(response.text) < 2000
    assert fs_server.calls("hpcuser1") == before


@pytest.mark.parametrize("outside", ["/etc/passwd", "/tmp", "/", "/work/main/.site/fsx"])
def test_outside_paths_are_403_without_touching_the_cluster(api, fs_server, workdir, outside):
    base = workdir["hpcuser1"]
    before = fs_server.calls("hpcuser1")
    for method, url, kwargs in requests_for(outside, base):
        response = api["hpcuser1"].request(method, url, **kwargs)
        assert response.status_code == 403, (method, url, response.text)
        assert "outside the filesystems" in response.json()["message"]
    assert fs_server.calls("hpcuser1") == before


def test_upload_file_name_cannot_escape(api, fs_server, workdir) -> None:
    base = workdir["hpcuser1"]
    before = fs_server.calls("hpcuser1")
    for name in ("..", ".", "a/b", "../../etc/x"):
        response = api["hpcuser1"].post(
            "/upload", params={"path": base}, files={"file": (name, b"x")}
        )
        assert response.status_code == 400, (name, response.text)
    assert fs_server.calls("hpcuser1") == before


async def test_writes_through_a_symlink_out_of_the_filesystems_are_refused(
    api, workdir, sftp_as
) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    outside = f"/tmp/hpcgate-escape-{uuid.uuid4().hex[:8]}"
    await sftp.mkdir(outside)
    try:
        await sftp.symlink(outside, f"{base}/out")
        await sftp.symlink(f"{outside}/new-file", f"{base}/dangling")
        async with sftp.open(f"{outside}/victim", "wb") as handle:
            await handle.write("v")
        await sftp.symlink(f"{outside}/victim", f"{base}/victim-link")
        client = api["hpcuser1"]
        attempts = [
            client.post("/mkdir", json={"path": f"{base}/out/made"}),
            client.post("/mkdir", json={"path": f"{base}/out/a/b", "parent": True}),
            client.post("/upload", params={"path": f"{base}/out"}, files={"file": ("f", b"x")}),
            client.delete("/rm", params={"path": f"{base}/out/victim"}),
            client.post("/symlink", json={"path": base, "linkPath": f"{base}/out/l"}),
            client.post("/compress", json={"path": base, "targetPath": f"{base}/out/a.tgz"}),
            client.post("/extract", json={"path": f"{base}/a.tgz", "targetPath": f"{base}/out"}),
        ]
        for response in attempts:
            assert response.status_code == 403, (response.request.url, response.text)
            assert "symlink" in response.json()["message"]
        # chmod and chown never follow a symlink, wherever it leads (400)
        for response in [
            client.put("/chmod", json={"path": f"{base}/out", "mode": "777"}),
            client.put("/chmod", json={"path": f"{base}/victim-link", "mode": "777"}),
            client.put("/chown", json={"path": f"{base}/out", "group": "project1"}),
        ]:
            assert response.status_code == 400, (response.request.url, response.text)
            assert "symbolic link" in response.json()["message"]
        # an upload onto a link replaces the link by a regular file: never writes through
        for name in ("dangling", "victim-link"):
            response = client.post("/upload", params={"path": base}, files={"file": (name, b"x")})
            assert response.status_code == 204, response.text
            attrs = await sftp.lstat(f"{base}/{name}")
            assert attrs.type == asyncssh.FILEXFER_TYPE_REGULAR
        assert sorted(await sftp.listdir(outside)) == [".", "..", "victim"]
        async with sftp.open(f"{outside}/victim") as handle:
            assert await handle.read() == "v"
        assert (await sftp.stat(outside)).permissions & 0o777 != 0o777
        # removing the link itself is fine: it is inside; its target stays
        assert client.delete("/rm", params={"path": f"{base}/out"}).status_code == 204
        assert await sftp.exists(f"{outside}/victim")
    finally:
        await sftp.rmtree(outside)


async def test_users_are_isolated_by_the_clusters_permissions(api, workdir, sftp_as) -> None:
    mine = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    async with sftp.open(f"{mine}/secret", "wb") as handle:
        await handle.write("s")
    other = api["hpcuser2"]
    for response in [
        other.get("/ls", params={"path": mine}),
        other.get("/head", params={"path": f"{mine}/secret"}),
        other.get("/download", params={"path": f"{mine}/secret"}),
        other.get("/checksum", params={"path": f"{mine}/secret"}),
        other.get("/stat", params={"path": f"{mine}/secret"}),
        other.delete("/rm", params={"path": f"{mine}/secret"}),
        other.post("/mkdir", json={"path": f"{mine}/intruder"}),
        other.post("/upload", params={"path": mine}, files={"file": ("intruder", b"x")}),
        other.put("/chmod", json={"path": f"{mine}/secret", "mode": "777"}),
    ]:
        assert response.status_code == 403, (response.request.url, response.text)
    assert sorted(await sftp.listdir(mine)) == [".", "..", "secret"]
    # hpcuser1's 0700 scratch itself
    scratch = mine.rsplit("/", 1)[0]
    assert other.get("/ls", params={"path": scratch}).status_code == 403
    # and their own scratch works for them
    theirs = workdir["hpcuser2"]
    assert other.post("/mkdir", json={"path": f"{theirs}/ok"}).status_code == 201


async def test_quotes_and_command_substitutions_in_names_stay_literal(
    api, workdir, sftp_as, site_env
) -> None:
    base = workdir["hpcuser1"]
    tag = uuid.uuid4().hex[:8]
    client = api["hpcuser1"]
    # names with a quote, $(...), backticks and ; — some of them spell out a path
    directory = f"{base}/it's $(touch /tmp/pwned-{tag}) `touch pwned-{tag}`; x"
    made = client.post("/mkdir", json={"path": directory, "parent": True})
    assert made.status_code == 201, made.text
    name = f"q'uote $(touch pwned-{tag}) && id; `id` ;id"
    uploaded = client.post("/upload", params={"path": directory}, files={"file": (name, b"hi\n")})
    assert uploaded.status_code == 204, uploaded.text
    path = f"{directory}/{name}"

    listing = client.get("/ls", params={"path": directory}).json()["output"]
    assert [entry["name"] for entry in listing] == [name]
    checksum = client.get("/checksum", params={"path": path}).json()["output"]["checksum"]
    assert checksum == "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4"
    assert client.get("/file", params={"path": path}).json()["output"] == "ASCII text"
    packed = client.post("/compress", json={"path": directory, "targetPath": f"{base}/q'.tgz"})
    assert packed.status_code == 204, packed.text
    assert client.get("/head", params={"path": path}).json()["output"]["content"] == "hi\n"
    assert client.delete("/rm", params={"path": f"{base}/it's $(touch "}).status_code == 204

    assert not os.path.exists(f"/tmp/pwned-{tag}")
    sftp = await sftp_as("hpcuser1")
    for where in (site_env.home("hpcuser1"), base):
        assert not [n for n in await sftp.listdir(where) if "pwned" in n]


def test_unknown_system_and_missing_token(fs_server) -> None:
    with httpx.Client(base_url=fs_server.url) as anonymous:
        response = anonymous.get(f"/filesystem/{fs_server.system}/ops/ls", params={"path": "/"})
        assert response.status_code == 401
    with fs_server.client("hpcuser1") as client:
        response = client.get(f"{fs_server.url}/filesystem/nowhere/ops/ls", params={"path": "/"})
        assert response.status_code == 404
        assert "System not found" in response.json()["message"]
