"""Every ops/ endpoint against the real site: success and failure paths."""

from __future__ import annotations

import hashlib
import io
import tarfile

import httpx
import pytest

pytestmark = [pytest.mark.site, pytest.mark.e2e]


async def put(sftp, path: str, data: bytes) -> None:
    async with sftp.open(path, "wb", encoding=None) as handle:
        await handle.write(data)


def error(response: httpx.Response, status: int, text: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errorType"] in ("error", "validation")
    assert text in body["message"], body["message"]


# -- ls, stat, readlink-ish ----------------------------------------------------------


async def test_ls_shapes_hidden_symlinks_and_names(api, workdir, sftp_as) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    await put(sftp, f"{base}/b.txt", b"12345")
    await put(sftp, f"{base}/.hidden", b"")
    await sftp.mkdir(f"{base}/a-dir")
    await sftp.symlink("b.txt", f"{base}/link")
    await sftp.chmod(f"{base}/b.txt", 0o640)

    response = api["hpcuser1"].get("/ls", params={"path": base})
    assert response.status_code == 200, response.text
    files = response.json()["output"]
    assert [f["name"] for f in files] == ["a-dir", "b.txt", "link"]
    by_name = {f["name"]: f for f in files}
    assert by_name["b.txt"] == {
        "name": "b.txt",
        "type": "-",
        "linkTarget": None,
        "user": "hpcuser1",
        "group": "hpcuser1",
        "permissions": "rw-r-----",
        "lastModified": by_name["b.txt"]["lastModified"],
        "size": "5",
    }
    assert len(by_name["b.txt"]["lastModified"]) == 19 and "T" in by_name["b.txt"]["lastModified"]
    assert by_name["a-dir"]["type"] == "d"
    assert by_name["link"]["type"] == "l" and by_name["link"]["linkTarget"] == "b.txt"

    hidden = api["hpcuser1"].get("/ls", params={"path": base, "showHidden": "true"}).json()
    assert [f["name"] for f in hidden["output"]] == [".hidden", "a-dir", "b.txt", "link"]

    numeric = api["hpcuser1"].get("/ls", params={"path": base, "numericUid": "true"}).json()
    assert {f["user"] for f in numeric["output"]} == {"1001"}

    followed = api["hpcuser1"].get("/ls", params={"path": base, "dereference": "true"}).json()
    link = next(f for f in followed["output"] if f["name"] == "link")
    assert link["type"] == "-" and link["size"] == "5" and link["linkTarget"] is None


async def test_ls_recursive_and_single_file(api, workdir, sftp_as) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    await sftp.makedirs(f"{base}/x/y")
    await put(sftp, f"{base}/x/y/deep.txt", b"d")
    await put(sftp, f"{base}/top.txt", b"t")

    files = api["hpcuser1"].get("/ls", params={"path": base, "recursive": "true"}).json()
    assert [f["name"] for f in files["output"]] == ["top.txt", "x", "x/y", "x/y/deep.txt"]

    single = api["hpcuser1"].get("/ls", params={"path": f"{base}/top.txt"}).json()["output"]
    assert [(f["name"], f["size"]) for f in single] == [(f"{base}/top.txt", "1")]


def test_ls_failures(api, workdir, site_env) -> None:
    error(
        api["hpcuser1"].get("/ls", params={"path": f"{workdir['hpcuser1']}/nope"}),
        404,
        "No such file or directory",
    )
    error(api["hpcuser2"].get("/ls", params={"path": workdir["hpcuser1"]}), 403)
    error(api["hpcuser1"].get("/ls", params={}), 400)


async def test_stat_and_dereference(api, workdir, sftp_as) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    await put(sftp, f"{base}/f", b"x" * 1234)
    await sftp.symlink(f"{base}/f", f"{base}/l")
    own = await sftp.stat(f"{base}/f")

    stat = api["hpcuser1"].get("/stat", params={"path": f"{base}/f"}).json()["output"]
    assert set(stat) == {
        "mode",
        "ino",
        "dev",
        "nlink",
        "uid",
        "gid",
        "size",
        "atime",
        "mtime",
        "ctime",
    }
    assert all(isinstance(value, int) for value in stat.values())
    assert stat["size"] == 1234 and stat["uid"] == 1001 and stat["mtime"] == own.mtime
    assert stat["mode"] == 0o100644 or stat["mode"] & 0o170000 == 0o100000

    link = api["hpcuser1"].get("/stat", params={"path": f"{base}/l"}).json()["output"]
    assert link["mode"] & 0o170000 == 0o120000
    followed = (
        api["hpcuser1"]
        .get("/stat", params={"path": f"{base}/l", "dereference": "true"})
        .json()["output"]
    )
    assert followed["size"] == 1234
    error(
        api["hpcuser1"].get("/stat", params={"path": f"{base}/none"}),
        404,
        "No such file or directory",
    )


# -- head, tail, view, checksum, file ----------------------------------------------

TEXT = b"".join(b"line %d\n" % i for i in range(1, 31))


async def test_head_and_tail(api, workdir, sftp_as) -> None:
    path = f"{workdir['hpcuser1']}/text.txt"
    await put(await sftp_as("hpcuser1"), path, TEXT)
    client = api["hpcuser1"]

    head = client.get("/head", params={"path": path}).json()["output"]
    assert head == {
        "content": "".join(f"line {i}\n" for i in range(1, 11)),
        "contentType": "lines",
        "startPosition": 0,
        "endPosition": 10,
    }
    head = client.get("/head", params={"path": path, "bytes": 7}).json()["output"]
    assert head["content"] == "line 1\n" and head["contentType"] == "bytes"
    head = client.get("/head", params={"path": path, "lines": 2, "skipTrailing": "true"})
    assert head.json()["output"]["content"] == TEXT.decode()[: -len("line 29\nline 30\n")]
    assert head.json()["output"]["endPosition"] == -2

    tail = client.get("/tail", params={"path": path, "lines": 2}).json()["output"]
    assert tail == {
        "content": "line 29\nline 30\n",
        "contentType": "lines",
        "startPosition": -2,
        "endPosition": -1,
    }
    tail = client.get("/tail", params={"path": path, "bytes": 3}).json()["output"]
    assert tail["content"] == "30\n"
    tail = client.get("/tail", params={"path": path, "lines": 30, "skipHeading": "true"})
    assert tail.json()["output"]["content"] == "line 30\n"
    # pyfirecrest sends unset values as empty strings
    blank = client.get("/tail", params={"path": path, "lines": "", "bytes": "", "skipHeading": ""})
    assert blank.status_code == 200 and blank.json()["output"]["content"].count("\n") == 10

    error(client.get("/head", params={"path": path, "lines": 1, "bytes": 1}), 400, "Only one")
    error(client.get("/tail", params={"path": path, "lines": -1}), 400)
    error(client.get("/head", params={"path": workdir["hpcuser1"]}), 400, "Is a directory")
    error(client.get("/tail", params={"path": path + ".no"}), 404, "No such file or directory")
    error(api["hpcuser2"].get("/head", params={"path": path}), 403)


async def test_view_checksum_and_file_type(api, workdir, sftp_as) -> None:
    base = workdir["hpcuser1"]
    path = f"{base}/text.txt"
    await put(await sftp_as("hpcuser1"), path, TEXT)
    client = api["hpcuser1"]

    assert client.get("/view", params={"path": path}).json()["output"] == TEXT.decode()
    part = client.get("/view", params={"path": path, "offset": 5, "size": 3}).json()
    assert part["output"] == TEXT[5:8].decode()
    error(client.get("/view", params={"path": path, "size": 0}), 400)
    error(client.get("/view", params={"path": path, "offset": -1}), 400)
    error(client.get("/view", params={"path": path, "size": 10**12}), 400)

    checksum = client.get("/checksum", params={"path": path}).json()["output"]
    assert checksum == {"algorithm": "SHA256", "checksum": hashlib.sha256(TEXT).hexdigest()}
    error(client.get("/checksum", params={"path": base}), 400, "Is a directory")
    error(client.get("/checksum", params={"path": path + "x"}), 404, "No such file or directory")

    assert client.get("/file", params={"path": path}).json()["output"] == "ASCII text"
    assert client.get("/file", params={"path": base}).json()["output"] == "directory"
    error(client.get("/file", params={"path": path + "x"}), 404, "No such file or directory")


# -- mkdir, symlink, chmod, chown, rm ------------------------------------------------


def test_mkdir(api, workdir) -> None:
    base = workdir["hpcuser1"]
    client = api["hpcuser1"]
    created = client.post("/mkdir", json={"sourcePath": f"{base}/new"})
    assert created.status_code == 201, created.text
    output = created.json()["output"]
    assert output["name"] == f"{base}/new" and output["type"] == "d"
    assert output["user"] == "hpcuser1"

    error(client.post("/mkdir", json={"path": f"{base}/new"}), 400, "File exists")
    error(client.post("/mkdir", json={"path": f"{base}/a/b/c"}), 404, "No such file or directory")
    deep = client.post("/mkdir", json={"path": f"{base}/a/b/c", "parent": True})
    assert deep.status_code == 201 and deep.json()["output"]["name"] == f"{base}/a/b/c"
    again = client.post("/mkdir", json={"source_path": f"{base}/a/b/c", "parent": "true"})
    assert again.status_code == 201
    error(api["hpcuser2"].post("/mkdir", json={"path": f"{base}/theirs"}), 403)
    error(client.post("/mkdir", json={"parent": True}), 400)


def test_symlink(api, workdir) -> None:
    base = workdir["hpcuser1"]
    client = api["hpcuser1"]
    client.post("/mkdir", json={"path": f"{base}/target"})
    made = client.post("/symlink", json={"sourcePath": f"{base}/target", "linkPath": f"{base}/ln"})
    assert made.status_code == 201, made.text
    assert made.json()["output"]["type"] == "l"
    assert made.json()["output"]["linkTarget"] == f"{base}/target"
    again = client.post("/symlink", json={"path": f"{base}/target", "link_path": f"{base}/ln"})
    error(again, 400, "File exists")
    error(client.post("/symlink", json={"path": "/etc", "linkPath": f"{base}/etc"}), 403)


async def test_chmod(api, workdir, sftp_as) -> None:
    path = f"{workdir['hpcuser1']}/f"
    await put(await sftp_as("hpcuser1"), path, b"x")
    client = api["hpcuser1"]
    changed = client.put("/chmod", json={"path": path, "mode": "750"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["output"]["permissions"] == "rwxr-x---"
    changed = client.put("/chmod", json={"sourcePath": path, "mode": "go-rx,u-w"})
    assert changed.json()["output"]["permissions"] == "r-x------"
    assert (
        client.put("/chmod", json={"path": path, "mode": "a=rX"}).json()["output"]["permissions"]
        == "r-xr-xr-x"
    )
    for bad in ["999", "u+q", "rwx", "7777777", "u+x;id", ""]:
        error(client.put("/chmod", json={"path": path, "mode": bad}), 400, "Invalid mode")
    error(client.put("/chmod", json={"path": path + "x", "mode": "700"}), 404)
    error(api["hpcuser2"].put("/chmod", json={"path": path, "mode": "777"}), 403)


async def test_chown(api, workdir, sftp_as) -> None:
    path = f"{workdir['hpcuser1']}/f"
    await put(await sftp_as("hpcuser1"), path, b"x")
    client = api["hpcuser1"]
    changed = client.put("/chown", json={"path": path, "group": "project1"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["output"]["group"] == "project1"
    assert changed.json()["output"]["user"] == "hpcuser1"
    same = client.put("/chown", json={"path": path, "owner": "hpcuser1", "group": "hpcuser1"})
    assert same.json()["output"]["group"] == "hpcuser1"
    error(client.put("/chown", json={"path": path, "owner": "hpcuser2"}), 403)
    error(client.put("/chown", json={"path": path, "owner": "no-such-user-x"}), 400, "No such user")
    error(client.put("/chown", json={"path": path, "owner": "a b"}), 400, "Invalid user")
    error(client.put("/chown", json={"path": path}), 400)


async def test_rm_files_trees_and_not_through_symlinks(api, workdir, sftp_as) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    await sftp.makedirs(f"{base}/tree/sub/deeper")
    await sftp.makedirs(f"{base}/keep")
    await put(sftp, f"{base}/keep/precious", b"p")
    for i in range(50):
        await put(sftp, f"{base}/tree/sub/f{i}", b"x")
    await put(sftp, f"{base}/tree/sub/deeper/g", b"y")
    await sftp.symlink(f"{base}/keep", f"{base}/tree/link-to-keep")
    await put(sftp, f"{base}/file", b"z")
    client = api["hpcuser1"]

    assert client.delete("/rm", params={"path": f"{base}/file"}).status_code == 204
    assert not await sftp.exists(f"{base}/file")
    assert client.delete("/rm", params={"path": f"{base}/tree"}).status_code == 204
    assert not await sftp.exists(f"{base}/tree")
    assert await sftp.exists(f"{base}/keep/precious")

    error(client.delete("/rm", params={"path": f"{base}/file"}), 404, "No such file or directory")
    error(api["hpcuser2"].delete("/rm", params={"path": f"{base}/keep"}), 403)
    assert await sftp.exists(f"{base}/keep/precious")
    root = workdir["hpcuser1"].rsplit("/", 3)[0] + "/scratch"
    error(client.delete("/rm", params={"path": root}), 403)


# -- compress / extract ----------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "none", "bzip2", "xz"])
async def test_compress_and_extract_round_trip(api, workdir, sftp_as, compression) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    await sftp.makedirs(f"{base}/src/inner")
    await put(sftp, f"{base}/src/a.txt", b"alpha")
    await put(sftp, f"{base}/src/inner/b.dat", b"beta")
    client = api["hpcuser1"]

    archive = f"{base}/out.tar"
    made = client.post(
        "/compress",
        json={"sourcePath": f"{base}/src", "targetPath": archive, "compression": compression},
    )
    assert made.status_code == 204, made.text
    client.post("/mkdir", json={"path": f"{base}/unpacked"})
    unpacked = client.post(
        "/extract",
        json={
            "source_path": archive,
            "target_path": f"{base}/unpacked",
            "compression": compression,
        },
    )
    assert unpacked.status_code == 204, unpacked.text
    async with sftp.open(f"{base}/unpacked/src/inner/b.dat", "rb", encoding=None) as handle:
        assert await handle.read() == b"beta"


async def test_compress_match_pattern_and_failures(api, workdir, sftp_as) -> None:
    base = workdir["hpcuser1"]
    sftp = await sftp_as("hpcuser1")
    await sftp.makedirs(f"{base}/src")
    for name in ("a.txt", "b.txt", "c.log"):
        await put(sftp, f"{base}/src/{name}", name.encode())
    client = api["hpcuser1"]
    made = client.post(
        "/compress",
        json={
            "source_path": f"{base}/src",
            "target_path": f"{base}/txt.tar.gz",
            "match_pattern": r".*\.txt",
            "dereference": False,
        },
    )
    assert made.status_code == 204, made.text
    async with sftp.open(f"{base}/txt.tar.gz", "rb", encoding=None) as handle:
        data = await handle.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        assert sorted(archive.getnames()) == ["./src/a.txt", "./src/b.txt"]

    error(
        client.post(
            "/compress", json={"sourcePath": f"{base}/none", "targetPath": f"{base}/x.tgz"}
        ),
        404,
    )
    error(
        client.post(
            "/compress",
            json={"sourcePath": f"{base}/src", "targetPath": f"{base}/x", "compression": "zip"},
        ),
        400,
    )
    error(
        client.post(
            "/extract", json={"sourcePath": f"{base}/txt.tar.gz", "targetPath": f"{base}/missing"}
        ),
        404,
    )
    error(
        client.post(
            "/extract", json={"sourcePath": f"{base}/src/a.txt", "targetPath": f"{base}/src"}
        ),
        400,
    )


# -- download / upload (small; large ones in test_transfers) ---------------------------


async def test_download_and_upload_small(api, workdir, sftp_as) -> None:
    base = workdir["hpcuser1"]
    client = api["hpcuser1"]
    uploaded = client.post(
        "/upload", params={"path": base}, files={"file": ("small.bin", b"\x00\x01binary\xff")}
    )
    assert uploaded.status_code == 204, uploaded.text
    downloaded = client.get("/download", params={"path": f"{base}/small.bin"})
    assert downloaded.status_code == 200
    assert downloaded.content == b"\x00\x01binary\xff"
    assert downloaded.headers["content-type"] == "application/octet-stream"

    overwrite = client.post("/upload", params={"path": base}, files={"file": ("small.bin", b"new")})
    assert overwrite.status_code == 204
    assert client.get("/download", params={"path": f"{base}/small.bin"}).content == b"new"

    error(client.get("/download", params={"path": base}), 400, "Is a directory")
    error(client.get("/download", params={"path": f"{base}/none"}), 404, "No such file")
    error(client.post("/upload", params={"path": f"{base}/none"}, files={"file": ("a", b"x")}), 404)
    error(client.post("/upload", params={"path": base}, files={"other": ("a", b"x")}), 400)
    error(client.post("/upload", params={"path": base}, content=b"raw"), 400)
    error(client.post("/upload", params={"path": base}, files={"file": ("..", b"x")}), 400)
    error(api["hpcuser2"].post("/upload", params={"path": base}, files={"file": ("a", b"x")}), 403)
    error(api["hpcuser2"].get("/download", params={"path": f"{base}/small.bin"}), 403)
