"""Two server replicas sharing transfer state in a real redis-server, on the local site:
an upload made on one is served by the other, part by part and PATCH by PATCH."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from firecrest.utilities import part_checksum_xml

from tests.events.conftest import redis_url  # noqa: F401  (the session's redis-server)
from tests.server import ApiServer, start_server
from tests.site import SiteEnv
from tests.transfer.conftest import SIGNING_KEY, wait_for_job
from tests.transfer.test_restart import (
    MIB,
    PART,
    TUS,
    _patch_headers,
    _rebase,
    _s3_upload,
    _sha256,
    _staging,
    _tus_create,
)

pytestmark = [pytest.mark.site, pytest.mark.e2e]


@pytest.fixture
def replicas(site_env: SiteEnv, tmp_path: Path, redis_url: str) -> Iterator[list[ApiServer]]:  # noqa: F811
    """Two servers, each with its own state directory, sharing Redis and the URL key."""
    settings = {
        "health": {"interval_seconds": 3600},
        "idempotency": {
            "backend": "redis",
            "redis_url": redis_url,
            "redis_key_prefix": f"e2e:{uuid.uuid4().hex[:8]}:",
        },
        "transfer": {
            "signing_key": SIGNING_KEY,
            "part_size": PART,
            "job_poll_seconds": 0.2,
            "redis_key_prefix": f"e2e-xfer:{uuid.uuid4().hex[:8]}:",
        },
    }
    servers: list[ApiServer] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(start_server(site_env, tmp_path / name, settings_overrides=settings))
        yield servers
    finally:
        for server in servers:
            server.stop()


def _client(server: ApiServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=server.headers(), timeout=90)


async def test_parts_and_completion_on_the_other_replica(
    replicas: list[ApiServer], space: dict[str, str], sftp_as: Any
) -> None:
    a, b = replicas
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    target = f"{base}/replicated.bin"
    data = os.urandom(2 * PART + 99)
    parts = [data[i : i + PART] for i in range(0, len(data), PART)]
    async with _client(a) as on_a, _client(b) as on_b:
        response = await _s3_upload(on_a, a, target, len(data))
        assert response.status_code == 201, response.text
        info = response.json()
        urls = info["transferDirectives"]["partsUploadUrls"]
        etags = {}
        for number, (client, server) in enumerate(((on_a, a), (on_b, b), (on_b, b)), start=1):
            answer = await client.put(
                _rebase(urls[number - 1], server.url), content=parts[number - 1]
            )
            assert answer.status_code == 200, answer.text
            etags[number] = answer.headers["ETag"]
        body = part_checksum_xml([{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)])
        complete = _rebase(info["transferDirectives"]["completeUploadUrl"], b.url)
        answer = await on_b.post(complete, content=body)
        assert answer.status_code == 200, answer.text
        # completing again, on the first replica, answers the same
        again = _rebase(complete, a.url)
        repeat = await on_a.post(again, content=body)
        assert repeat.status_code == 200 and repeat.text == answer.text
        job = await wait_for_job(on_a, a.system, info["transferJob"]["jobId"])
    assert job["status"]["state"] == "COMPLETED"
    assert await _sha256(sftp, target) == hashlib.sha256(data).digest()
    assert await _staging(sftp, base) == []


async def test_tus_patches_alternate_between_replicas(
    replicas: list[ApiServer], space: dict[str, str], sftp_as: Any
) -> None:
    a, b = replicas
    sftp = await sftp_as("hpcuser1")
    base = space["hpcuser1"]
    target = f"{base}/tus-replicated.bin"
    data = os.urandom(6 * MIB + 1)
    digest = hashlib.sha256(data).digest()
    cuts = [0, 2 * MIB + 7, 4 * MIB, len(data)]
    async with _client(a) as on_a, _client(b) as on_b:
        url = await _tus_create(on_a, a, target, len(data), digest)
        for index, client in enumerate((on_b, on_a, on_b)):
            server = (b, a, b)[index]
            here = _rebase(url, server.url)
            head = await client.head(here, headers=TUS)
            assert head.status_code == 200, head.text
            assert int(head.headers["Upload-Offset"]) == cuts[index]
            start, end = cuts[index], cuts[index + 1]
            response = await client.patch(
                here, headers=_patch_headers(start), content=data[start:end]
            )
            assert response.status_code == 204, response.text
            assert response.headers["Upload-Offset"] == str(end)
        # another user, on either replica, does not see it
        async with httpx.AsyncClient(headers=b.headers("hpcuser2"), timeout=30) as other:
            assert (await other.head(_rebase(url, b.url), headers=TUS)).status_code == 404
    assert await _sha256(sftp, target) == digest
    assert await _staging(sftp, base) == []
