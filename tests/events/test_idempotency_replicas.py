"""Two server replicas sharing the Redis idempotency store, on the local Slurm site."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from hpcgate.compute.idempotency import KeyScope, stamp
from tests.events.conftest import FAULT_PREFIX, FAULTS
from tests.events.test_idempotency import job_body, jobs_named, jobs_with_stamp
from tests.server import start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]


async def test_one_key_sent_to_two_replicas_makes_one_job(
    site_env: SiteEnv, tmp_path: Path, redis_url: str, ssh_as
) -> None:
    """The same key reaches both replicas at once: one submits (and stalls before
    recording the job, widening the race); the other waits for its answer."""
    idempotency = {
        "backend": "redis",
        "redis_url": redis_url,
        "redis_key_prefix": f"e2e:{uuid.uuid4().hex[:8]}:",
    }
    settings = {"idempotency": idempotency, "health": {"interval_seconds": 3600}}
    servers = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(
                start_server(
                    site_env, tmp_path / name, settings_overrides=settings, launcher=FAULTS
                )
            )
        name = f"idem-{uuid.uuid4().hex[:8]}"
        key = f"{FAULT_PREFIX}{uuid.uuid4()}"
        body = job_body(site_env, name)
        async with httpx.AsyncClient(timeout=60) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{server.url}/compute/{server.system}/jobs",
                        json=body,
                        headers={**server.headers(), "Idempotency-Key": key},
                    )
                    for _ in range(5)
                    for server in servers
                )
            )
        assert [a.status_code for a in answers] == [201] * 10, [a.text for a in answers]
        ids = {a.json()["jobId"] for a in answers}
        assert len(ids) == 1
        assert sum(a.headers.get("Idempotent-Replayed") != "true" for a in answers) == 1
        comment = stamp(KeyScope(servers[0].system, "hpcuser1", key))
        assert await jobs_with_stamp(ssh_as, "hpcuser1", comment) == list(ids)
        assert await jobs_named(ssh_as, "hpcuser1", name) == list(ids)
    finally:
        for server in servers:
            server.stop()
