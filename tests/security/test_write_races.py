"""Writes into a shared directory cannot be redirected by another group member.

hpcuser1 (the victim) writes into the shared project directory: ops/upload,
transfer/upload (anonymous signed part PUTs) and tus. hpcuser2 (the attacker, same
group) swaps entries of that directory for symlinks to hpcuser1's private
``~/secret-*.txt`` (0600 in a 0700 home) at the worst moments: between the requests
of a flow, in the middle of a streamed body, and in bounded loops of concurrent swaps.
The private file must never change (bytes and mtime), the upload either lands
byte-exact as a regular file or fails clearly, and no ``.hpcgate-upload-*`` staging
directory is left by the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from firecrest.utilities import part_checksum_xml

from tests.security.shared_dirs import (
    Secret,
    attack_async,
    home_listing,
    shared_directory,
    staging_entries,
    swaps_done,
    toggling,
    victim_file,
    victim_secret,
)
from tests.server import ApiServer, start_server
from tests.site import SiteEnv
from tests.transfer.conftest import wait_for_job

pytestmark = [pytest.mark.site, pytest.mark.e2e]

MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
BOUNDARY = "hpcgate-test-boundary"


@pytest.fixture(scope="module")
def server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    api = start_server(
        site_env,
        tmp_path_factory.mktemp("write-races"),
        # short-lived transfers: a job whose upload a failed test never completes
        # gives up within minutes instead of holding a transfer slot for hours
        settings_overrides={
            "transfer": {"part_size": MIB, "job_poll_seconds": 0.2, "url_ttl_seconds": 300}
        },
    )
    yield api
    api.stop()


@pytest.fixture
def shared(site_env: SiteEnv) -> Iterator[str]:
    with shared_directory(site_env["HPC_SITE_PROJECT_DIR"]) as path:
        yield path


@pytest.fixture
def secret() -> Iterator[Secret]:
    with victim_secret() as planted:
        yield planted


@pytest.fixture
async def victim(server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers("hpcuser1"), timeout=60
    ) as client:
        yield client


async def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.01)


def _regular_with(path: str, data: bytes) -> bool:
    return not os.path.islink(path) and os.path.isfile(path) and open(path, "rb").read() == data


# -- ops/upload --------------------------------------------------------------------------


async def _ops_upload(
    client: httpx.AsyncClient, server: ApiServer, directory: str, name: str, data: bytes
) -> httpx.Response:
    return await client.post(
        f"/filesystem/{server.system}/ops/upload",
        params={"path": directory},
        files={"file": (name, data)},
    )


async def test_ops_upload_replaces_a_swapped_in_symlink_instead_of_writing_through(
    server: ApiServer, victim: httpx.AsyncClient, shared: str, secret: Secret
) -> None:
    target = f"{shared}/x.dat"
    victim_file(target, b"old results")
    await attack_async(["unlink", target], ["symlink", secret.path, target])
    data = os.urandom(300_000)
    response = await _ops_upload(victim, server, shared, "x.dat", data)
    assert response.status_code == 204, response.text
    assert secret.unchanged()
    assert _regular_with(target, data)
    assert os.stat(target).st_uid == os.stat(secret.path).st_uid  # the victim's own file
    assert staging_entries(shared) == []


async def test_ops_upload_keeps_the_mode_of_the_file_it_replaces(
    server: ApiServer, victim: httpx.AsyncClient, shared: str
) -> None:
    target = f"{shared}/kept.dat"
    victim_file(target, b"old", mode=0o660)
    assert (await _ops_upload(victim, server, shared, "kept.dat", b"new")).status_code == 204
    assert _regular_with(target, b"new")
    assert os.stat(target).st_mode & 0o7777 == 0o660
    fresh = await _ops_upload(victim, server, shared, "fresh.dat", b"fresh")
    assert fresh.status_code == 204
    assert os.stat(f"{shared}/fresh.dat").st_mode & 0o077 == 0o044  # the server's umask 022


async def test_ops_upload_swap_while_the_body_streams(
    server: ApiServer, victim: httpx.AsyncClient, shared: str, secret: Secret
) -> None:
    """The swap happens after every check of the server, while the bytes flow."""
    target = f"{shared}/x.dat"
    victim_file(target, b"old results")
    data = os.urandom(2 * MIB)
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.dat"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    async def body() -> AsyncIterator[bytes]:
        yield head + data[:MIB]
        await _wait_until(lambda: staging_entries(shared) != [])  # the server is writing
        await attack_async(["unlink", target], ["symlink", secret.path, target])
        yield data[MIB:] + f"\r\n--{BOUNDARY}--\r\n".encode()

    response = await victim.post(
        f"/filesystem/{server.system}/ops/upload",
        params={"path": shared},
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert response.status_code == 204, response.text
    assert secret.unchanged()
    assert _regular_with(target, data)
    assert staging_entries(shared) == []


async def test_ops_upload_under_200_concurrent_swaps(
    server: ApiServer, victim: httpx.AsyncClient, shared: str, secret: Secret
) -> None:
    target = f"{shared}/x.dat"
    victim_file(target, b"old results")
    uploads = 0
    with toggling(target, secret.path, 200) as attacker:
        while attacker.poll() is None and uploads < 100:
            data = os.urandom(64 * 1024)
            response = await _ops_upload(victim, server, shared, "x.dat", data)
            assert response.status_code == 204, response.text
            uploads += 1
            assert secret.unchanged()
    assert swaps_done(attacker) >= 150
    assert uploads >= 5
    assert secret.unchanged()
    assert staging_entries(shared) == []


async def test_ops_upload_cut_off_midway_leaves_the_target_and_no_staging(
    server: ApiServer, shared: str
) -> None:
    target = f"{shared}/x.dat"
    victim_file(target, b"old results")
    location = urlsplit(server.url)
    _, writer = await asyncio.open_connection(location.hostname, location.port)
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.dat"\r\n\r\n'
    ).encode()
    query = urlencode({"path": shared})
    writer.write(
        (
            f"POST /filesystem/{server.system}/ops/upload?{query} HTTP/1.1\r\n"
            f"Host: {location.netloc}\r\nAuthorization: Bearer {server.token('hpcuser1')}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(part) + 4 * MIB}\r\n\r\n"
        ).encode()
        + part
        + os.urandom(MIB)
    )
    await writer.drain()
    await _wait_until(lambda: staging_entries(shared) != [])
    writer.transport.abort()  # the client goes away mid-body
    await _wait_until(lambda: staging_entries(shared) == [])
    assert _regular_with(target, b"old results")


# -- transfer/upload: anonymous part PUTs -------------------------------------------------


async def _start_multipart(
    client: httpx.AsyncClient, server: ApiServer, target: str, size: int
) -> dict[str, Any]:
    response = await client.post(
        f"/filesystem/{server.system}/transfer/upload",
        json={"path": target, "transferDirectives": {"fileSize": size, "transferMethod": "s3"}},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


@contextlib.asynccontextmanager
async def _multipart(
    client: httpx.AsyncClient, server: ApiServer, target: str, size: int
) -> AsyncIterator[dict[str, Any]]:
    """A started transfer/upload; its job is cancelled unless the block completed it
    (a job whose upload never completes would hold a transfer slot until expiry)."""
    info = await _start_multipart(client, server, target, size)
    job_id = info["transferJob"]["jobId"]
    try:
        yield info
    except BaseException:
        await client.delete(f"/compute/{server.system}/jobs/{job_id}")
        raise


@dataclass
class Answer:
    status_code: int
    text: str
    head: str

    @property
    def content(self) -> bytes:
        return self.text.encode()


async def _refused_early(
    method: str, url: str, body: bytes, headers: dict[str, str] | None = None
) -> Answer:
    """Send the head and the first KiB of ``body``, then wait for the answer.

    A refusal comes before the server reads the body, and the server then closes the
    connection rather than drain it; a client still sending the rest would be reset
    and lose the answer, so this one stops sending and reads (a write never refused
    hangs here until the timeout: the test fails).
    """
    location = urlsplit(url)
    reader, writer = await asyncio.open_connection(location.hostname, location.port)
    head = f"{method} {location.path}?{location.query} HTTP/1.1\r\nHost: {location.netloc}\r\n"
    for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
        head += f"{name}: {value}\r\n"
    try:
        writer.write(head.encode() + b"\r\n" + body[:1024])
        await writer.drain()
        async with asyncio.timeout(15):
            answer = await reader.read()  # to the end: the server closes the connection
    finally:
        writer.transport.abort()
    status_line, _, rest = answer.partition(b"\r\n")
    head_bytes, _, text = rest.partition(b"\r\n\r\n")
    return Answer(
        int(status_line.split()[1]), text.decode(errors="replace"), head_bytes.decode().lower()
    )


async def _steal_secret_name(staging: str) -> str:
    """Root reads the name inside the victim's 0700 staging directory: the test plays
    an attacker who won a race at its creation, to check the second line of defence."""
    [name] = os.listdir(staging)
    return name


async def test_part_put_into_a_swapped_staging_directory_writes_nothing(
    server: ApiServer, victim: httpx.AsyncClient, shared: str, secret: Secret
) -> None:
    target = f"{shared}/x.dat"
    data = os.urandom(MIB + MIB // 2)
    parts = [data[:MIB], data[MIB:]]
    async with (
        _multipart(victim, server, target, len(data)) as info,
        httpx.AsyncClient(timeout=60) as anon,
    ):
        urls = info["transferDirectives"]["partsUploadUrls"]
        [staging_name] = staging_entries(shared)
        staging = f"{shared}/{staging_name}"
        aside = f"{shared}/.moved-by-attacker"
        home = os.path.dirname(secret.path)

        # the staging directory for a symlink to the victim's home, then to the secret
        await attack_async(["rename", staging, aside], ["symlink", home, staging])
        refused = await _refused_early("PUT", urls[0], parts[0])
        assert refused.status_code == 409, refused.text
        assert "staging" in refused.text and secret.data.strip() not in refused.content
        await attack_async(["unlink", staging], ["symlink", secret.path, staging])
        assert (await _refused_early("PUT", urls[0], parts[0])).status_code == 409

        # even with the secret name (a lost race at creation): a planted link of that
        # name, leading to the victim's private file, is opened but never written
        stolen = await _steal_secret_name(aside)
        trap = f"{shared}/trap"
        await attack_async(
            ["mkdir", trap, 0o755],
            ["symlink", secret.path, f"{trap}/{stolen}"],
            ["unlink", staging],
            ["symlink", trap, staging],
        )
        assert (await _refused_early("PUT", urls[1], parts[1])).status_code == 409
        assert secret.unchanged()
        assert stolen not in home_listing()  # nothing was created in the victim's home

        # the attacker puts everything back: the upload goes on and lands byte-exact
        await attack_async(["unlink", staging], ["rename", aside, staging])
        etags = {}
        for number, url in enumerate(urls, 1):
            response = await anon.put(url, content=parts[number - 1])
            assert response.status_code == 200, response.text
            etags[number] = response.headers["ETag"]
        body = part_checksum_xml([{"ETag": etags[n], "PartNumber": n} for n in (1, 2)])
        completed = await anon.post(info["transferDirectives"]["completeUploadUrl"], content=body)
        assert completed.status_code == 200, completed.text
    job = await wait_for_job(victim, server.system, info["transferJob"]["jobId"])
    assert job["status"]["state"] == "COMPLETED"
    assert _regular_with(target, data)
    assert secret.unchanged()
    assert staging_entries(shared) == []


async def test_complete_refuses_a_swapped_staging_file(
    server: ApiServer, victim: httpx.AsyncClient, shared: str, secret: Secret
) -> None:
    """Completion renames nothing it did not verify: no chmod through a planted link."""
    target = f"{shared}/x.dat"
    victim_file(target, b"old", mode=0o664)  # completion would give the new file this mode
    data = os.urandom(1000)
    async with (
        _multipart(victim, server, target, len(data)) as info,
        httpx.AsyncClient(timeout=60) as anon,
    ):
        directives = info["transferDirectives"]
        put = await anon.put(directives["partsUploadUrls"][0], content=data)
        assert put.status_code == 200
        [staging_name] = staging_entries(shared)
        staging = f"{shared}/{staging_name}"
        stolen = await _steal_secret_name(staging)
        trap = f"{shared}/trap"
        await attack_async(
            ["mkdir", trap, 0o755],
            ["symlink", secret.path, f"{trap}/{stolen}"],
            ["rename", staging, f"{shared}/.moved-by-attacker"],
            ["symlink", trap, staging],
        )
        body = part_checksum_xml([{"ETag": put.headers["ETag"], "PartNumber": 1}])
        refused = await anon.post(directives["completeUploadUrl"], content=body)
        assert refused.status_code == 409, refused.text
        assert secret.unchanged()
        assert os.stat(secret.path).st_mode & 0o777 == 0o600
        assert _regular_with(target, b"old")
        await attack_async(["unlink", staging], ["rename", f"{shared}/.moved-by-attacker", staging])
        completed = await anon.post(directives["completeUploadUrl"], content=body)
        assert completed.status_code == 200, completed.text
    await wait_for_job(victim, server.system, info["transferJob"]["jobId"])
    assert _regular_with(target, data)
    assert os.stat(target).st_mode & 0o777 == 0o664
    assert staging_entries(shared) == []


def _tampered(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _status_without_sending_the_body(
    server: ApiServer, method: str, url: str, length: int
) -> int:
    """Announce a body of an acceptable ``length``, send none of it: the answer must
    come anyway (an oversize one gets 413 at the edge, before any of this)."""
    location = urlsplit(server.url)
    target = urlsplit(url)
    reader, writer = await asyncio.open_connection(location.hostname, location.port)
    try:
        writer.write(
            f"{method} {target.path}?{target.query} HTTP/1.1\r\nHost: {location.netloc}\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        await writer.drain()
        async with asyncio.timeout(5):
            status_line = await reader.readline()
    finally:
        writer.transport.abort()
    return int(status_line.split()[1])


async def test_signed_routes_refuse_before_reading_any_body(
    server: ApiServer, victim: httpx.AsyncClient, shared: str
) -> None:
    target = f"{shared}/x.dat"
    info = await _start_multipart(victim, server, target, 2 * MIB)
    await victim.delete(f"/compute/{server.system}/jobs/{info['transferJob']['jobId']}")
    directives = info["transferDirectives"]
    part = directives["partsUploadUrls"][0]
    complete = directives["completeUploadUrl"]
    signature = parse_qs(urlsplit(part).query)["signature"][0]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    expires = parse_qs(urlsplit(part).query)["expires"][0]
    cases = {
        "tampered part": ("PUT", _tampered(part, signature=flipped), MIB, 403),
        "no signature": ("PUT", _tampered(part, signature=""), MIB, 403),
        "expiry moved": ("PUT", _tampered(part, expires=str(int(expires) + 60)), MIB, 403),
        "expired": ("PUT", _tampered(part, expires=str(int(time.time()) - 10)), MIB, 403),
        "tampered complete": ("POST", _tampered(complete, signature=flipped), 1000, 403),
        "unknown transfer": ("PUT", part.replace(part.split("/")[4], "f" * 32), MIB, 404),
    }
    for reason, (method, url, length, code) in cases.items():
        status = await _status_without_sending_the_body(server, method, url, length)
        assert status == code, reason
    staging = f"{shared}/{staging_entries(shared)[0]}"
    [staged] = os.listdir(staging)
    with open(f"{staging}/{staged}", "rb") as handle:  # nothing was written into it
        assert handle.read() == bytes(2 * MIB)


# -- tus ----------------------------------------------------------------------------------


async def _tus_create(
    client: httpx.AsyncClient, server: ApiServer, target: str, data: bytes
) -> httpx.Response:
    path = base64.b64encode(target.encode()).decode()
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return await client.post(
        f"/filesystem/{server.system}/uploads",
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": f"path {path},sha256 {digest}",
        },
    )


def _tus_headers(offset: int) -> dict[str, str]:
    return {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }


async def _tus_patch(
    client: httpx.AsyncClient, url: str, offset: int, body: bytes
) -> httpx.Response:
    return await client.patch(url, headers=_tus_headers(offset), content=body)


async def _tus_patch_refused(server: ApiServer, url: str, offset: int, body: bytes) -> Answer:
    headers = {**_tus_headers(offset), "Authorization": f"Bearer {server.token('hpcuser1')}"}
    return await _refused_early("PATCH", url, body, headers)


async def test_tus_patch_into_a_swapped_staging_directory_writes_nothing(
    server: ApiServer, victim: httpx.AsyncClient, shared: str, secret: Secret
) -> None:
    target = f"{shared}/x.dat"
    data = os.urandom(MIB)
    created = await _tus_create(victim, server, target, data)
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    [staging_name] = staging_entries(shared)
    staging = f"{shared}/{staging_name}"
    aside = f"{shared}/.moved-by-attacker"

    await attack_async(["rename", staging, aside], ["symlink", secret.path, staging])
    refused = await _tus_patch_refused(server, url, 0, data)
    assert refused.status_code == 409, refused.text
    assert "tus-resumable: 1.0.0" in refused.head and "staging" in refused.text
    await attack_async(["unlink", staging], ["symlink", os.path.dirname(secret.path), staging])
    assert (await _tus_patch_refused(server, url, 0, data)).status_code == 409
    stolen = await _steal_secret_name(aside)
    await attack_async(
        ["mkdir", f"{shared}/trap", 0o755],
        ["symlink", secret.path, f"{shared}/trap/{stolen}"],
        ["unlink", staging],
        ["symlink", f"{shared}/trap", staging],
    )
    assert (await _tus_patch_refused(server, url, 0, data)).status_code == 409
    assert secret.unchanged()

    await attack_async(["unlink", staging], ["rename", aside, staging])
    head = await victim.head(url, headers=TUS)
    assert head.headers["Upload-Offset"] == "0"  # nothing counted from the refused PATCHes
    done = await _tus_patch(victim, url, 0, data)
    assert done.status_code == 204, done.text
    assert _regular_with(target, data)
    assert secret.unchanged()
    assert staging_entries(shared) == []


# the attacker redirects every staging directory the moment it appears, to a directory
# of their own (to learn the secret name of a file created through it), and then to
# one where that name is a symlink to the victim's private file
_REDIRECTOR = r"""
import os, sys, time
shared, secret, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
prefix = ".hpcgate-upload-"
learn, trap = os.path.join(shared, "learn"), os.path.join(shared, "trap")
for directory in (learn, trap):
    os.mkdir(directory)
    os.chmod(directory, 0o777)
seen, planted, grabbed, learned = set(), set(), 0, 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for name in os.listdir(shared):
        if name.startswith(prefix) and name not in seen:
            seen.add(name)
            path = os.path.join(shared, name)
            try:
                os.rename(path, os.path.join(shared, ".grabbed" + name))
                os.symlink(learn, path)
                grabbed += 1
            except OSError:
                pass
    for name in os.listdir(learn):
        if name not in planted:
            planted.add(name)
            learned += 1
            os.symlink(secret, os.path.join(trap, name))
            for staging in seen:
                temporary = os.path.join(shared, ".retarget")
                try:
                    os.symlink(trap, temporary)
                    os.rename(temporary, os.path.join(shared, staging))
                except OSError:
                    pass
print(grabbed, learned)
"""


async def test_tus_uploads_while_every_staging_directory_is_redirected(
    server: ApiServer, victim: httpx.AsyncClient, shared: str, secret: Secret
) -> None:
    """A bounded loop against the creation of the staging directory itself."""
    import subprocess

    attacker = subprocess.Popen(
        ["runuser", "-u", "hpcuser2", "--", "/usr/bin/python3", "-c", _REDIRECTOR,
         shared, secret.path, "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    outcomes: list[str] = []
    try:
        await _wait_until(lambda: os.path.isdir(f"{shared}/trap"))
        for turn in range(20):
            target = f"{shared}/up-{turn}.dat"
            data = os.urandom(16_000)  # all read before a refusal: no reset loses it
            created = await _tus_create(victim, server, target, data)
            assert created.status_code in (201, 409), created.text
            if created.status_code == 409:
                outcomes.append("refused at creation")
                continue
            patched = await _tus_patch(victim, created.headers["Location"], 0, data)
            assert patched.status_code in (204, 409), patched.text
            if patched.status_code == 204:
                assert _regular_with(target, data)
                outcomes.append("completed")
            else:
                assert not os.path.lexists(target)
                outcomes.append("refused at PATCH")
            assert secret.unchanged()
    finally:
        stdout, stderr = attacker.communicate(timeout=30)
    assert attacker.returncode == 0, stderr
    grabbed, learned = map(int, stdout.split())
    print(f"outcomes {sorted(set(outcomes))}; grabbed {grabbed}, learned {learned} names")
    assert grabbed >= 10  # the attacker really was in the way
    assert secret.unchanged()
    assert os.stat(secret.path).st_mode & 0o777 == 0o600
