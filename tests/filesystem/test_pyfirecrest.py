"""pyfirecrest's v2 client, unchanged, for the filesystem operations."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import firecrest
import pytest
from firecrest.FirecrestException import FirecrestException

from tests.filesystem.conftest import FsServer

pytestmark = [pytest.mark.site, pytest.mark.e2e]


class Token:
    def __init__(self, server: FsServer, user: str) -> None:
        self.server, self.user = server, user

    def get_access_token(self) -> str:
        return self.server.token(self.user)


@pytest.fixture(scope="module")
def fc(fs_server: FsServer) -> firecrest.v2.Firecrest:
    return firecrest.v2.Firecrest(
        firecrest_url=fs_server.url, authorization=Token(fs_server, "hpcuser1")
    )


def test_pyfirecrest_filesystem_calls(fc, fs_server, workdir, tmp_path: Path) -> None:
    system, base = fs_server.system, workdir["hpcuser1"]

    made = fc.mkdir(system, f"{base}/a/b", create_parents=True)
    assert made["name"] == f"{base}/a/b" and made["type"] == "d"

    local = tmp_path / "payload.bin"
    data = os.urandom(100 * 1024)
    local.write_bytes(data)
    assert fc.upload(system, local, f"{base}/a", "payload.bin") is None
    text = tmp_path / "text.txt"
    text.write_text("".join(f"row {i}\n" for i in range(20)))
    fc.upload(system, text, base, "text.txt")

    files = fc.list_files(system, f"{base}/a")
    assert [(f["name"], f["type"]) for f in files] == [("b", "d"), ("payload.bin", "-")]
    # like ls -R: a directory's entries, then each subdirectory's
    recursive = fc.list_files(system, base, recursive=True)
    assert [f["name"] for f in recursive] == ["a", "text.txt", "a/b", "a/payload.bin"]
    hidden = fc.list_files(system, base, show_hidden=True, numeric_uid=True, dereference=True)
    assert {f["user"] for f in hidden} == {"1001"}

    assert fc.stat(system, f"{base}/a/payload.bin")["size"] == len(data)
    assert fc.head(system, f"{base}/text.txt", num_lines=2)["content"] == "row 0\nrow 1\n"
    assert fc.head(system, f"{base}/text.txt", num_bytes=3)["content"] == "row"
    assert fc.tail(system, f"{base}/text.txt", num_lines=1)["content"] == "row 19\n"
    assert (
        fc.tail(system, f"{base}/text.txt", num_lines=20, exclude_beginning=True)["content"]
        == "row 19\n"
    )
    assert fc.view(system, f"{base}/text.txt").startswith("row 0\nrow 1\n")
    checksum = fc.checksum(system, f"{base}/a/payload.bin")
    assert checksum["checksum"] == hashlib.sha256(data).hexdigest()
    assert fc.file_type(system, f"{base}/text.txt") == "ASCII text"

    link = fc.symlink(system, f"{base}/text.txt", f"{base}/link")
    assert link["output"]["type"] == "l"
    assert fc.chmod(system, f"{base}/text.txt", "600")["permissions"] == "rw-------"

    target = tmp_path / "back.bin"
    assert fc.download(system, f"{base}/a/payload.bin", target) is None
    assert target.read_bytes() == data

    fc.rm(system, f"{base}/a")
    with pytest.raises(FirecrestException) as caught:
        fc.stat(system, f"{base}/a")
    assert caught.value.responses[-1].status_code == 404
    with pytest.raises(FileNotFoundError):
        fc.download(system, f"{base}/a/payload.bin", tmp_path / "none")


def test_pyfirecrest_sees_forbidden_and_bad_mode(fc, fs_server, workdir) -> None:
    system = fs_server.system
    with pytest.raises(FirecrestException) as caught:
        fc.list_files(system, workdir["hpcuser2"])
    assert caught.value.responses[-1].status_code == 403
    with pytest.raises(FirecrestException) as caught:
        fc.chmod(system, workdir["hpcuser1"], "u+q")
    assert caught.value.responses[-1].status_code == 400
