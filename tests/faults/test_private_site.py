"""The private site runs beside the shared one, and neither one's control touches the other."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.private_site import PrivateServer, PrivateSite
from tests.site import SiteEnv, site

pytestmark = [pytest.mark.site]


def pids(listing: str) -> set[str]:
    """The PIDs of ``check-stopped``'s listing."""
    return {line.split()[0] for line in listing.splitlines() if line[:1].isdigit()}


async def test_two_sites_side_by_side(
    private_site: PrivateSite, site_env: SiteEnv, ssh_as, tmp_path: Path, private_server
) -> None:
    env = private_site.env
    assert env.ssh_port != site_env.ssh_port and env["HPC_SITE_DIR"] != site_env["HPC_SITE_DIR"]
    assert all(private_site.running().values())
    # one session open on each site, as the same user
    main_session = await ssh_as("hpcuser1")
    server: PrivateServer = private_server(tmp_path)
    with server.client() as client:
        listing = client.get(
            f"/filesystem/{server.system}/ops/ls", params={"path": env.home("hpcuser1")}
        )
        assert listing.status_code == 200, listing.text
    ours = pids(private_site.run("check-stopped", check=False).stdout)
    theirs = pids(site("check-stopped", check=False).stdout)
    assert ours and theirs and not ours & theirs
    # restarting the private sshd ends only its own sessions
    private_site.restart("sshd")
    assert (await main_session.run("true", check=True)).exit_status == 0
    assert site("status", check=False).returncode == 0


async def test_private_jobs_stay_private(
    private_site: PrivateSite, site_env: SiteEnv, tmp_path: Path, private_server
) -> None:
    server: PrivateServer = private_server(tmp_path)
    name = f"priv-{uuid.uuid4().hex[:8]}"
    body = {
        "job": {
            "name": name,
            "workingDirectory": private_site.env.scratch("hpcuser1"),
            "script": "#!/bin/bash\ntrue\n",
            "standardOutput": "/dev/null",
        }
    }
    with server.client() as client:
        answer = client.post(f"/compute/{server.system}/jobs", json=body)
        assert answer.status_code == 201, answer.text
    for _ in range(60):
        if name in private_site.sacct_names():
            break
        await asyncio.sleep(0.5)
    assert private_site.sacct_names().count(name) == 1
    # the shared site's accounting, read as root with its own configuration
    main = subprocess.run(
        ["sacct", "-X", "-n", "-a", "-P", "-S", "now-1hours", "-o", "JobName%200"],
        capture_output=True,
        text=True,
        env={"SLURM_CONF": site_env.slurm_conf, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert name not in main.stdout.split()
