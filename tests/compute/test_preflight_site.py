"""Dry-run submission through the real server against the real site."""

from __future__ import annotations

import shlex
import time
import uuid

import httpx
import pytest

from tests.api.helpers import submit, wait_final
from tests.server import ApiServer
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]


@pytest.fixture(scope="module")
def alice(api_server: ApiServer) -> httpx.Client:
    return api_server.client("hpcuser1")


def job(site_env: SiteEnv, name: str, **fields: object) -> dict[str, object]:
    return {
        "name": name,
        "workingDirectory": site_env.scratch("hpcuser1"),
        "script": "#!/bin/bash\ntrue\n",
        "standardOutput": "/dev/null",
        **fields,
    }


async def jobs_named(ssh_as, name: str) -> str:  # type: ignore[no-untyped-def]
    """What the controller and accounting know of jobs called ``name`` (asked directly)."""
    conn = await ssh_as("hpcuser1")
    squeue = shlex.join(["squeue", "-h", "-t", "all", "--me", f"--name={name}", "-o", "%i"])
    sacct = shlex.join(["sacct", "-n", "-X", f"--name={name}", "-S", "now-600", "-o", "JobID"])
    result = await conn.run(f"{squeue}; {sacct}", check=True)
    return str(result.stdout).strip()


async def test_bad_account_fails_fast_and_submits_nothing(
    api_server: ApiServer, alice: httpx.Client, site_env: SiteEnv, ssh_as
) -> None:
    name = f"pf-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    response = alice.post(
        f"/compute/{api_server.system}/jobs",
        params={"dryRun": "true"},
        json={"job": job(site_env, name, account="nosuchaccount")},
    )
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    verdict = response.json()
    assert verdict["valid"] is False
    assert verdict["category"] == "account"
    assert "Invalid account" in verdict["reason"]
    assert took < 2.0, took
    for fields, category in (
        ({"partition": "nosuchpartition"}, "partition"),
        ({"qos": "nosuchqos"}, "qos"),
        ({"nodes": 50}, "resources"),
        ({"extraOptions": {"uid": "0"}}, "request"),
    ):
        answer = alice.post(
            f"/compute/{api_server.system}/jobs?dryRun=true",
            json={"job": job(site_env, name, **fields)},
        ).json()
        assert answer["valid"] is False and answer["category"] == category, (fields, answer)
    assert await jobs_named(ssh_as, name) == ""


async def test_valid_job_gets_a_start_forecast_and_is_not_submitted(
    api_server: ApiServer, alice: httpx.Client, site_env: SiteEnv, ssh_as
) -> None:
    name = f"pf-{uuid.uuid4().hex[:8]}"
    key = f"pf-key-{uuid.uuid4().hex}"
    body = {"job": job(site_env, name, account=site_env["HPC_SITE_ACCOUNT"], env={"A": "$(x) 'y'"})}
    url = f"/compute/{api_server.system}/jobs"
    response = alice.post(
        url, params={"dryRun": "true"}, json=body, headers={"Idempotency-Key": key}
    )
    assert response.status_code == 200, response.text
    verdict = response.json()
    assert verdict["valid"] is True, verdict
    assert verdict["partition"] == site_env["HPC_SITE_DEFAULT_PARTITION"]
    assert verdict["processors"] >= 1 and verdict["nodes"]
    assert abs(verdict["expectedStart"] - time.time()) < 3600
    assert await jobs_named(ssh_as, name) == ""
    # the dry run did not take the key: the real submission with it creates the job
    submitted = alice.post(url, json=body, headers={"Idempotency-Key": key})
    assert submitted.status_code == 201, submitted.text
    assert "Idempotent-Replayed" not in submitted.headers
    assert (
        wait_final(alice, api_server.system, submitted.json()["jobId"])["status"]["state"]
        == "COMPLETED"
    )
    # and a plain submission is what it always was
    assert submit(alice, api_server.system, job(site_env, name)).isdigit()


def test_openapi_documents_the_extensions(api_server: ApiServer, alice: httpx.Client) -> None:
    spec = alice.get("/openapi.json").json()
    post = spec["paths"]["/compute/{system_name}/jobs"]["post"]
    assert any(p["name"] == "dryRun" and p["in"] == "query" for p in post["parameters"])
    assert "200" in post["responses"] and "201" in post["responses"]
    assert "/compute/{system_name}/jobs/{job_id}/accounting" in spec["paths"]
