"""Signed download URLs are bound to the file they were issued for.

hpcuser1 (the victim) asks for a download URL of a file in the shared project
directory, meant to be handed around: whoever holds the URL may fetch it without a
token. hpcuser2 (the attacker, same group) swaps the file for a symlink to
hpcuser1's private ``~/secret-*.txt`` (which only hpcuser1 can read) before the URL is
fetched. The server reads as hpcuser1, so without the binding the URL would serve the
secret to the attacker.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.shared_dirs import (
    Secret,
    attack_async,
    shared_directory,
    swaps_done,
    toggling,
    victim_file,
    victim_secret,
)
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

DATA = b"shared results\n" * 1000


@pytest.fixture(scope="module")
def server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    api = start_server(site_env, tmp_path_factory.mktemp("signed-download"))
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


async def _download_url(server: ApiServer, path: str) -> str:
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers("hpcuser1"), timeout=60
    ) as client:
        response = await client.post(
            f"/filesystem/{server.system}/transfer/download",
            json={"sourcePath": path, "transferDirectives": {"transferMethod": "s3"}},
        )
        assert response.status_code == 201, response.text
        info: dict[str, Any] = response.json()
        await _cancel(client, server, info["transferJob"]["jobId"])
    return str(info["transferDirectives"]["downloadUrl"])


async def _cancel(client: httpx.AsyncClient, server: ApiServer, job_id: str) -> None:
    """The download's readiness job is not what these tests look at: do not queue it."""
    await client.delete(f"/compute/{server.system}/jobs/{job_id}")


def _refused(response: httpx.Response, secret: Secret) -> None:
    assert response.status_code in (403, 409), (response.status_code, response.text)
    assert secret.data.strip() not in response.content
    assert "changed" in response.text or "symbolic link" in response.text, response.text


async def test_url_refuses_a_symlink_swapped_in_after_issue(
    server: ApiServer, shared: str, secret: Secret
) -> None:
    target = f"{shared}/x.dat"
    victim_file(target, DATA)
    url = await _download_url(server, target)

    await attack_async(["rename", target, f"{shared}/x.orig"], ["symlink", secret.path, target])
    async with httpx.AsyncClient(timeout=60) as anon:  # whoever holds the URL
        whole, ranged, tail, head = await asyncio.gather(
            anon.get(url),
            anon.get(url, headers={"Range": "bytes=0-10"}),
            anon.get(url, headers={"Range": "bytes=-5"}),
            anon.head(url),
        )
        for response in (whole, ranged, tail):
            _refused(response, secret)
        assert head.status_code in (403, 409)
        assert head.headers.get("content-length") != str(len(secret.data))

        # the attacker's own regular file of the same size, in place of the original
        await attack_async(["unlink", target], ["write", target, "A" * len(DATA)])
        _refused(await anon.get(url), secret)

        # the original back: the URL serves what it was issued for
        await attack_async(["unlink", target], ["rename", f"{shared}/x.orig", target])
        restored = await anon.get(url)
    assert restored.status_code == 200, restored.text
    assert restored.content == DATA
    assert secret.unchanged()


async def test_url_refuses_a_file_changed_since_issue(server: ApiServer, shared: str) -> None:
    target = f"{shared}/x.dat"
    victim_file(target, DATA)
    url = await _download_url(server, target)
    victim_file(target, DATA[:-1] + b"?")  # same size, rewritten by its owner
    os.utime(target, (1_500_000_000, 1_500_000_000))
    async with httpx.AsyncClient(timeout=60) as anon:
        response = await anon.get(url)
    assert response.status_code == 409, response.text
    assert "changed since the download URL was issued" in response.text


async def test_no_url_for_a_symlink_planted_by_another_user(
    server: ApiServer, shared: str, secret: Secret
) -> None:
    """The swap before the URL is issued: the victim would hand out their own secret."""
    target = f"{shared}/x.dat"
    await attack_async(["symlink", secret.path, target])
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers("hpcuser1"), timeout=60
    ) as client:
        response = await client.post(
            f"/filesystem/{server.system}/transfer/download",
            json={"sourcePath": target, "transferDirectives": {"transferMethod": "s3"}},
        )
    assert response.status_code == 403, response.text
    assert "symbolic link owned by another user" in response.text
    assert secret.data.strip() not in response.content


async def test_the_victims_own_symlink_still_works(server: ApiServer, shared: str) -> None:
    real = f"{shared}/real.dat"
    victim_file(real, DATA)
    link = f"{shared}/link.dat"
    os.symlink(real, link)
    os.lchown(link, Path(real).stat().st_uid, -1)
    url = await _download_url(server, link)
    async with httpx.AsyncClient(timeout=60) as anon:
        response = await anon.get(url)
    assert response.status_code == 200 and response.content == DATA


async def test_url_under_a_loop_of_swaps_never_serves_the_secret(
    server: ApiServer, shared: str, secret: Secret
) -> None:
    target = f"{shared}/x.dat"
    victim_file(target, DATA)
    url = await _download_url(server, target)
    codes: list[int] = []
    async with httpx.AsyncClient(timeout=60) as anon:
        with toggling(target, secret.path, 200) as attacker:
            while attacker.poll() is None and len(codes) < 400:
                response = await anon.get(url)
                assert secret.data.strip() not in response.content
                if response.status_code == 200:
                    assert response.content == DATA
                else:
                    assert response.status_code in (404, 409), response.text
                codes.append(response.status_code)
        assert swaps_done(attacker) >= 150
    assert len(codes) >= 10
    assert secret.unchanged()
