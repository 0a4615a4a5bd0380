"""Small helpers shared by the API tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from hpcgate.compute.jobs import TERMINAL_STATES
from hpcgate.config import Settings


def submit(client: httpx.Client, system: str, job: dict[str, Any]) -> str:
    response = client.post(f"/compute/{system}/jobs", json={"job": job})
    assert response.status_code == 201, response.text
    job_id = response.json()["jobId"]
    assert isinstance(job_id, str) and job_id.isdigit()
    return job_id


def job_state(client: httpx.Client, system: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"/compute/{system}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    jobs = response.json()["jobs"]
    assert jobs, response.text
    return jobs[0]


def wait_final(client: httpx.Client, system: str, job_id: str, limit: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        job = job_state(client, system, job_id)
        if job["status"]["state"] in TERMINAL_STATES:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not final after {limit} s: {job}")


def wait_state(
    client: httpx.Client, system: str, job_id: str, state: str, limit: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        job = job_state(client, system, job_id)
        if job["status"]["state"] == state:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never {state} in {limit} s: {job}")


def unit_settings(tmp_path: Path) -> Settings:
    """Settings of one system for tests that never reach a cluster (no site)."""
    return Settings.model_validate(
        {
            "auth": {
                "issuer": "https://idp.example",
                "audience": "hpc",
                "jwks_url": "https://idp/j",
            },
            "systems": [
                {
                    "name": "cluster",
                    "ssh": {"host": "login", "known_hosts": "/etc/ssh/known_hosts"},
                    "credentials": {"kind": "ca", "ca_key": "/etc/hpcgate/ca"},
                }
            ],
            "state_dir": tmp_path,
        }
    )
