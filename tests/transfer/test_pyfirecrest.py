"""pyfirecrest's v2 client, unchanged, through the transfer endpoints and flows."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import firecrest
import pytest
from firecrest.FirecrestException import TransferJobFailedException

from tests.site import SiteEnv
from tests.transfer.conftest import TransferServer, read_text, transfer_server

pytestmark = [
    pytest.mark.site,
    pytest.mark.e2e,
    # pyfirecrest posts the completion XML with data=<str>
    pytest.mark.filterwarnings("ignore:Use .content=:DeprecationWarning"),
]

MIB = 1024 * 1024


class Token:
    def __init__(self, server: TransferServer, user: str) -> None:
        self.server, self.user = server, user

    def get_access_token(self) -> str:
        return self.server.token(self.user)


def _client(server: TransferServer, user: str = "hpcuser1") -> firecrest.v2.AsyncFirecrest:
    return firecrest.v2.AsyncFirecrest(firecrest_url=server.url, authorization=Token(server, user))


async def test_upload_and_download_50_mib_through_the_transfer_flow(
    xfer: TransferServer, space: dict[str, str], sftp_as: Any, tmp_path: Path
) -> None:
    sftp = await sftp_as("hpcuser1")
    base, system = space["hpcuser1"], xfer.system
    fc = _client(xfer)
    local = tmp_path / "big.bin"
    data = os.urandom(50 * MIB + 4321)
    local.write_bytes(data)
    # over pyfirecrest's MAX_DIRECT_UPLOAD_SIZE (1 MiB): it takes the "s3" transfer flow
    assert len(data) > fc.MAX_DIRECT_UPLOAD_SIZE
    upload = await fc.upload(system, local, base, "big.bin")
    assert upload is not None  # the transfer flow, not ops/upload
    info = upload.transfer_data
    assert len(info["transferDirectives"]["partsUploadUrls"]) == 7  # 8 MiB parts
    log = await read_text(sftp, info["transferJob"]["logs"]["outputLog"])
    assert "Multipart file upload successfully completed" in log
    checksum = await fc.checksum(system, f"{base}/big.bin")
    assert checksum["checksum"] == hashlib.sha256(data).hexdigest()

    back = tmp_path / "back.bin"
    download = await fc.download(system, f"{base}/big.bin", back)
    assert download is not None
    assert "downloadUrl" in download.transfer_data["transferDirectives"]
    assert back.read_bytes() == data
    await fc.close_session()


@pytest.fixture(scope="module")
def slow_ops(
    site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory
) -> Any:  # Iterator[TransferServer]
    """A server whose direct operations give up (408) after 0.4 s, as FirecREST's do
    on big trees: pyfirecrest then falls back on the transfer jobs."""
    ssh = {
        "host": site_env.ssh_host,
        "port": site_env.ssh_port,
        "known_hosts": str(site_env.known_hosts),
        "command_timeout": 0.4,
    }
    with transfer_server(site_env, tmp_path_factory.mktemp("slow-ops-keys"), ssh=ssh) as server:
        yield server


async def test_mv_cp_rm_compress_extract(
    slow_ops: TransferServer, space: dict[str, str], sftp_as: Any, ssh_as: Any
) -> None:
    sftp = await sftp_as("hpcuser1")
    base, system = space["hpcuser1"], slow_ops.system
    setup = (
        f"set -e; cd {base}; mkdir tree out many; head -c 16M /dev/urandom > tree/random; "
        "echo hello > tree/small.txt; echo move > it\\'s; (cd many; seq 1 200000 | xargs touch)"
    )
    await (await ssh_as("hpcuser1")).run(setup, check=True)
    fc = _client(slow_ops)
    await fc.list_files(system, base)  # a warm connection
    jobs_dir = f"{site_home(base)}/.hpcgate/transfers"
    before = set(await sftp.listdir(jobs_dir)) if await sftp.exists(jobs_dir) else set()

    async def compress_then_extract() -> None:
        # bzip2 of 16 MiB takes ~1 s: ops/compress and ops/extract answer 408
        await fc.compress(system, f"{base}/tree", f"{base}/t.tar.bz2", compression="bzip2")
        await fc.extract(system, f"{base}/t.tar.bz2", f"{base}/out", compression="bzip2")

    moved, copied, removed, _, failed = await asyncio.gather(
        fc.mv(system, f"{base}/it's", f"{base}/moved"),
        fc.cp(system, f"{base}/tree", f"{base}/copy"),
        fc.rm(system, f"{base}/many"),  # 200,000 files: ops/rm (GNU rm) answers 408
        compress_then_extract(),
        fc.mv(system, f"{base}/tree/small.txt", f"{base}/no/such/dir/x"),
        return_exceptions=True,
    )
    for outcome in (moved, copied, removed):
        assert not isinstance(outcome, BaseException), outcome
    assert isinstance(failed, TransferJobFailedException)
    assert moved["transferJob"]["system"] == system  # type: ignore[index]
    assert removed is not None  # the transfer job, not ops/rm
    kinds = {name.split("-", 1)[0] for name in set(await sftp.listdir(jobs_dir)) - before}
    assert {"mv", "cp", "rm", "compress", "extract"} <= kinds
    assert await read_text(sftp, f"{base}/moved") == "move\n"
    assert await read_text(sftp, f"{base}/copy/small.txt") == "hello\n"
    assert not await sftp.exists(f"{base}/many")
    assert await read_text(sftp, f"{base}/out/tree/small.txt") == "hello\n"
    await fc.close_session()


def site_home(path: str) -> str:
    """hpcuser1's home, from a path in their scratch (<fs>/scratch/<user>/...)."""
    root, user = path.split("/scratch/", 1)[0], path.split("/scratch/", 1)[1].split("/")[0]
    return f"{root}/home/{user}"
