"""A second, separate site instance: up is idempotent, down leaves nothing behind.

It runs beside the session's site with its own state directory, ports, cluster name,
users and account, so stopping it proves `down` touches only what its `up` started.
Its state directory lies below /tmp (world-writable), where a CI clone may live too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.site import SITE_COMMAND, SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.slow]

STATE = Path("/tmp/hpcgate-site-lifecycle")
ENV = {
    "HPC_SITE_DIR": str(STATE),
    "HPC_SITE_CLUSTER": "lifecycle",
    "HPC_SITE_USERS": "hpcltest1",
    "HPC_SITE_ACCOUNT": "lifeproj",
    # its own service identity: the session's servers hold SSH sessions as the shared
    # site's, whose home `up` would otherwise move (usermod refuses a user in use)
    "HPC_SITE_SERVICE_USER": "hpcltestsvc",
    # ports apart from the shared site's, the private fault site's (2322, 69xx, 3407
    # and +100 per xdist worker) and the container tests' (24xx-25xx, 70xx-71xx, 35xx-36xx)
    "HPC_SITE_SSH_PORT": "2722",
    "HPC_SITE_CTLD_PORT": "7317",
    "HPC_SITE_SLURMD_PORT": "7318",
    "HPC_SITE_DBD_PORT": "7319",
    "HPC_SITE_DB_PORT": "3807",
}


def site(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SITE_COMMAND), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ENV},
    )


def pids_mentioning(text: str) -> set[int]:
    """Live processes whose command line or environment mentions ``text``."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.add(int(proc.name))
    return found


@pytest.fixture(scope="module")
def second_site() -> Iterator[None]:
    site("down")
    shutil.rmtree(STATE, ignore_errors=True)
    yield
    site("down", "--purge")


def test_up_is_fast_and_idempotent_and_down_leaves_nothing(
    second_site: None, site_env: SiteEnv
) -> None:
    started = time.monotonic()
    first = site("up")
    up_seconds = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    assert up_seconds < 30, f"up took {up_seconds:.1f} s"
    print(f"second site up in {up_seconds:.1f} s")
    assert site("status").returncode == 0

    again = site("up")
    assert again.returncode == 0
    assert "already up" in again.stdout

    # the user's own key logs in over the site's sshd, state dir below /tmp or not
    login = subprocess.run(
        [
            "ssh",
            "-p",
            ENV["HPC_SITE_SSH_PORT"],
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={STATE}/sshd/known_hosts",
            "-i",
            f"{STATE}/keys/hpcltest1",
            "hpcltest1@127.0.0.1",
            "id",
            "-un",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert login.stdout.strip() == "hpcltest1", login.stderr

    # a running job whose processes `down` must end
    conf = f"{STATE}/etc/slurm.conf"
    submitted = subprocess.run(
        [
            "su",
            "-s",
            "/bin/sh",
            "hpcltest1",
            "-c",
            f"cd /tmp && SLURM_CONF={conf} sbatch --parsable --output=/dev/null --wrap 'sleep 300'",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"],
            capture_output=True,
            text=True,
            env={**os.environ, "SLURM_CONF": conf},
        ).stdout.strip()
        if state == "RUNNING":
            break
        time.sleep(0.2)
    assert state == "RUNNING"
    assert pids_mentioning(str(STATE)), "the second site's processes should be visible"

    main_site_before = site_status_pids()
    down = site("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert re.search(rf"cancelled jobs: .*{job_id}", down.stdout)
    assert site("check-stopped").returncode == 0
    assert pids_mentioning(str(STATE)) == set()
    assert site("status").returncode == 3
    # the session's own site is untouched
    assert site_status_pids() == main_site_before


def site_status_pids() -> list[str]:
    """The session site's daemon lines (with PIDs), not its node state, which varies."""
    out = subprocess.run(
        [str(SITE_COMMAND), "status"], capture_output=True, text=True, timeout=60
    ).stdout
    return [line for line in out.splitlines() if not line.startswith("node:")]
