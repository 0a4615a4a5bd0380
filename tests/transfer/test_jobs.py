"""transfer/mv, cp, rm, compress, extract through the API: real Slurm jobs on `xfer`."""

from __future__ import annotations

import asyncio
import io
import tarfile
from typing import Any

import asyncssh
import pytest

from tests.transfer.conftest import TransferServer, read_text, wait_for_job

pytestmark = [pytest.mark.site, pytest.mark.e2e, pytest.mark.slow]

NASTY = "it's $(touch pwned) `id` ;|& *"


def _archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def _put(sftp: asyncssh.SFTPClient, path: str, data: bytes) -> None:
    async with sftp.open(path, "wb") as handle:
        await handle.write(data)


async def _exists(sftp: asyncssh.SFTPClient, path: str) -> bool:
    try:
        await sftp.lstat(path)
    except asyncssh.SFTPNoSuchFile:
        return False
    return True


async def test_each_operation_is_a_job_that_logs_success(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any
) -> None:
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    await sftp.mkdir(f"{base}/tree")
    await _put(sftp, f"{base}/tree/a.txt", b"alpha")
    await _put(sftp, f"{base}/tree/b.dat", b"beta")
    await _put(sftp, f"{base}/{NASTY}", b"move me")
    await sftp.mkdir(f"{base}/doomed")
    await _put(sftp, f"{base}/doomed/x", b"x")
    await _put(sftp, f"{base}/in.tar.gz", _archive({"top/inner.txt": b"inner"}))
    await sftp.mkdir(f"{base}/out")
    t = xfer.path("transfer")
    requests: dict[str, tuple[str, str, dict[str, Any]]] = {
        "mv": ("POST", "/mv", {"sourcePath": f"{base}/{NASTY}", "targetPath": f"{base}/moved"}),
        "cp": ("POST", "/cp", {"sourcePath": f"{base}/tree", "targetPath": f"{base}/copy"}),
        "rm": ("DELETE", "/rm", {"path": f"{base}/doomed"}),
        "compress": (
            "POST",
            "/compress",
            {
                "source_path": f"{base}/tree",
                "target_path": f"{base}/t.tar.gz",
                "match_pattern": r".*\.txt",
            },
        ),
        "extract": (
            "POST",
            "/extract",
            {"sourcePath": f"{base}/in.tar.gz", "targetPath": f"{base}/out"},
        ),
    }
    async with xfer.async_client("hpcuser1") as client:

        async def run(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
            if method == "DELETE":
                response = await client.delete(t + path, params=body)
                assert response.status_code == 200, response.text
            else:
                response = await client.post(t + path, json=body)
                assert response.status_code == 201, response.text
            job = response.json()["transferJob"]
            ended = await wait_for_job(client, xfer.system, job["jobId"])
            return {"job": job, "ended": ended}

        results = dict(
            zip(requests, await asyncio.gather(*(run(*r) for r in requests.values())), strict=True)
        )
    expected_lines = {
        "mv": f"Files were successfully moved from {base}/{NASTY} to {base}/moved",
        "cp": "Files were successfully copied",
        "rm": f"Files were successfully removed: {base}/doomed",
        "compress": "Files were successfully compressed",
        "extract": "Files were successfully extracted",
    }
    for name, result in results.items():
        job, ended = result["job"], result["ended"]
        assert set(job) == {"jobId", "system", "workingDirectory", "logs"}
        assert job["system"] == xfer.system
        assert job["logs"]["outputLog"].startswith(job["workingDirectory"] + f"/{name}-")
        assert ended["status"]["state"] == "COMPLETED", (name, ended)
        assert ended["partition"] == "xfer" and ended["user"] == "hpcuser1"
        assert expected_lines[name] in await read_text(sftp, job["logs"]["outputLog"])
    assert await read_text(sftp, f"{base}/moved") == "move me"
    assert not await _exists(sftp, f"{base}/{NASTY}")
    assert sorted(await sftp.listdir(base)).count("pwned") == 0
    assert await read_text(sftp, f"{base}/copy/b.dat") == "beta"
    assert not await _exists(sftp, f"{base}/doomed")
    assert await read_text(sftp, f"{base}/out/top/inner.txt") == "inner"
    async with sftp.open(f"{base}/t.tar.gz", "rb") as handle:
        packed = await handle.read()
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        assert tar.getnames() == ["./tree/a.txt"]


async def test_refusals_before_anything_is_submitted(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any, site_env: Any
) -> None:
    sftp = await sftp_as("hpcuser1")
    base, other = space["hpcuser1"], space["hpcuser2"]
    await _put(sftp, f"{base}/f", b"f")
    t = xfer.path("transfer")
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("POST", "/mv", {"sourcePath": f"{base}/none", "targetPath": f"{base}/x"}, 404,
         "No such file or directory"),
        ("POST", "/cp", {"sourcePath": "/etc/passwd", "targetPath": f"{base}/x"}, 403, "outside"),
        ("POST", "/cp", {"sourcePath": f"{base}/f", "targetPath": "/tmp/x"}, 403, "outside"),
        ("POST", "/mv", {"sourcePath": "relative", "targetPath": f"{base}/x"}, 400, "absolute"),
        ("POST", "/mv", {"sourcePath": f"{base}/../f", "targetPath": f"{base}/x"}, 400, ".."),
        ("POST", "/mv", {"sourcePath": f"{base}/f\nx", "targetPath": f"{base}/x"}, 400,
         "newline"),
        ("POST", "/cp", {"sourcePath": f"{base}/f", "targetPath": f"{base}/{'a' * 5000}"}, 400,
         "longer"),
        ("DELETE", "/rm", {"path": site_env["HPC_SITE_SCRATCH_ROOT"]}, 403, "root"),
        ("POST", "/compress", {"sourcePath": f"{base}/f", "targetPath": f"{base}/f.tgz",
                               "matchPattern": "a\nb"}, 400, "matchPattern"),
        ("POST", "/compress", {"sourcePath": f"{base}/f", "targetPath": f"{base}/f.tgz",
                               "compression": "zip"}, 400, "compression"),
        ("POST", "/extract", {"sourcePath": f"{base}/f", "targetPath": f"{base}/f"}, 400,
         "Not a directory"),
        ("POST", "/download", {"sourcePath": f"{base}/f",
                               "transferDirectives": {"transferMethod": "streamer"}}, 400,
         "not offered"),
        ("POST", "/upload", {"path": f"{base}/up", "transferDirectives": {}}, 400, "fileSize"),
        ("POST", "/mv", {"sourcePath": f"{base}/f", "targetPath": f"{base}/g",
                         "account": "--uid=0"}, 400, "account"),
    ]  # fmt: skip
    async with xfer.async_client("hpcuser1") as client:
        for method, path, body, code, text in cases:
            if method == "DELETE":
                response = await client.delete(t + path, params=body)
            else:
                response = await client.post(t + path, json=body)
            assert response.status_code == code, (path, body, response.text)
            assert text in response.text, (path, response.text)
    # the cluster's own permissions: hpcuser2 may not touch hpcuser1's scratch (0700)
    async with xfer.async_client("hpcuser2") as client:
        response = await client.post(
            t + "/cp", json={"sourcePath": f"{base}/f", "targetPath": f"{other}/f"}
        )
        assert response.status_code == 403, response.text
        response = await client.delete(t + "/rm", params={"path": f"{base}/f"})
        assert response.status_code == 403, response.text
    assert await _exists(sftp, f"{base}/f")
    assert sorted(await sftp.listdir(base)) == [".", "..", "f"]


async def test_a_failing_job_logs_no_success_line(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any
) -> None:
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    await _put(sftp, f"{base}/not-an-archive.tgz", b"plain text")
    await sftp.mkdir(f"{base}/out")
    async with xfer.async_client("hpcuser1") as client:
        response = await client.post(
            xfer.path("transfer/extract"),
            json={"sourcePath": f"{base}/not-an-archive.tgz", "targetPath": f"{base}/out"},
        )
        assert response.status_code == 201, response.text
        job = response.json()["transferJob"]
        ended = await wait_for_job(client, xfer.system, job["jobId"])
    assert ended["status"]["state"] == "FAILED"
    assert "successfully" not in await read_text(sftp, job["logs"]["outputLog"])
    assert "Extracting" in await read_text(sftp, job["logs"]["errorLog"])


async def test_jobs_run_as_each_user_in_a_private_directory(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any
) -> None:
    sftp = await sftp_as("hpcuser2")
    base = space["hpcuser2"]
    await _put(sftp, f"{base}/mine", b"2")
    async with xfer.async_client("hpcuser2") as client:
        response = await client.post(
            xfer.path("transfer/cp"), json={"sourcePath": f"{base}/mine", "targetPath": f"{base}/c"}
        )
        assert response.status_code == 201, response.text
        job = response.json()["transferJob"]
        ended = await wait_for_job(client, xfer.system, job["jobId"])
    assert ended["user"] == "hpcuser2" and ended["status"]["state"] == "COMPLETED"
    assert "/home/hpcuser2/" in job["workingDirectory"]
    assert (await sftp.stat(job["workingDirectory"])).permissions & 0o077 == 0
    assert await read_text(sftp, f"{base}/c") == "2"


async def test_extract_job_never_writes_through_a_link_planted_in_the_target(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any
) -> None:
    """A symlink in the target (here the user's own) is neither followed nor replaced:
    the job fails and names it (tests/security/test_extract.py has a co-tenant's
    attacks on the victim's home, through the same script)."""
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    await sftp.mkdir(f"{base}/out")
    await sftp.mkdir(f"{base}/elsewhere")
    await sftp.symlink(f"{base}/elsewhere", f"{base}/out/sub")
    await _put(sftp, f"{base}/in.tar.gz", _archive({"sub/.bashrc": b"echo pwned\n"}))
    async with xfer.async_client("hpcuser1") as client:
        response = await client.post(
            xfer.path("transfer/extract"),
            json={"sourcePath": f"{base}/in.tar.gz", "targetPath": f"{base}/out"},
        )
        assert response.status_code == 201, response.text
        job = response.json()["transferJob"]
        ended = await wait_for_job(client, xfer.system, job["jobId"], timeout=300)
    assert ended["status"]["state"] == "FAILED"
    assert "sub already exists" in await read_text(sftp, job["logs"]["errorLog"])
    assert sorted(await sftp.listdir(f"{base}/elsewhere")) == [".", ".."]
    assert sorted(await sftp.listdir(f"{base}/out")) == [".", "..", "sub"]
