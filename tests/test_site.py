"""Smoke suite: the local site is a real Slurm cluster reached over real SSH."""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid

import asyncssh
import pytest

from tests.site import SiteEnv, site

pytestmark = pytest.mark.site


async def sh(conn: asyncssh.SSHClientConnection, *argv: str, stdin: str | None = None) -> str:
    result = await conn.run(shlex.join(argv), input=stdin, check=True, timeout=60)
    return str(result.stdout)


async def submit(conn: asyncssh.SSHClientConnection, script: str, *options: str) -> str:
    out = await sh(conn, "sbatch", "--parsable", *options, stdin=script)
    return out.strip().split(";")[0]


async def accounting(conn: asyncssh.SSHClientConnection, job_id: str) -> list[dict[str, str]]:
    """sacct's rows for the job (one per array task), as dicts."""
    out = await sh(conn, "sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode")
    rows = [line.split("|") for line in out.splitlines() if line]
    return [{"id": r[0], "state": r[1].split()[0], "exit": r[2]} for r in rows]


async def wait_final(
    conn: asyncssh.SSHClientConnection, job_id: str, count: int = 1, limit: float = 60
) -> list[dict[str, str]]:
    """Poll sacct until `count` rows of the job are in a final state."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        rows = await accounting(conn, job_id)
        if len(rows) >= count and all(r["state"] in final for r in rows):
            return rows
        await asyncio.sleep(0.25)
    raise AssertionError(f"job {job_id} not final after {limit}s: {rows}")


def test_status_reports_every_daemon(site_env: SiteEnv) -> None:
    out = site("status").stdout
    for daemon in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sshd"):
        assert f"{daemon}: running" in out
    assert "node: idle" in out or "node: mix" in out or "node: alloc" in out


def test_up_again_is_a_no_op(site_env: SiteEnv) -> None:
    before = site("status").stdout
    result = site("up")
    assert "already up" in result.stdout
    assert site("status").stdout.splitlines()[:6] == before.splitlines()[:6]


async def test_job_writes_file_and_completes(site_env: SiteEnv, ssh_as) -> None:
    conn = await ssh_as("hpcuser1")
    marker = uuid.uuid4().hex
    out_file = f"{site_env.scratch('hpcuser1')}/smoke-{marker}.txt"
    script = f"#!/bin/bash\necho {marker} > {shlex.quote(out_file)}\nwhoami >> {out_file}\n"
    chdir = f"--chdir={site_env.scratch('hpcuser1')}"
    job_id = await submit(conn, script, chdir, "--output=/dev/null")
    [row] = await wait_final(conn, job_id)
    assert row == {"id": job_id, "state": "COMPLETED", "exit": "0:0"}
    assert await sh(conn, "cat", out_file) == f"{marker}\nhpcuser1\n"


async def test_failing_job_reports_exit_code(site_env: SiteEnv, ssh_as) -> None:
    conn = await ssh_as("hpcuser1")
    job_id = await submit(conn, "#!/bin/bash\nexit 3\n", "--output=/dev/null")
    [row] = await wait_final(conn, job_id)
    assert row["state"] == "FAILED"
    assert row["exit"] == "3:0"


async def test_cancelled_job(site_env: SiteEnv, ssh_as) -> None:
    conn = await ssh_as("hpcuser1")
    job_id = await submit(conn, "#!/bin/bash\nsleep 300\n", "--output=/dev/null")
    await sh(conn, "scancel", job_id)
    [row] = await wait_final(conn, job_id)
    assert row["state"] == "CANCELLED"


async def test_array_of_three(site_env: SiteEnv, ssh_as) -> None:
    conn = await ssh_as("hpcuser1")
    out_dir = site_env.scratch("hpcuser1")
    tag = uuid.uuid4().hex[:8]
    task = "$SLURM_ARRAY_TASK_ID"
    script = f"#!/bin/bash\necho task {task} > {out_dir}/array-{tag}-{task}\n"
    job_id = await submit(conn, script, "--array=0-2", "--output=/dev/null")
    rows = await wait_final(conn, job_id, count=3)
    assert sorted(r["id"] for r in rows) == [f"{job_id}_{i}" for i in range(3)]
    assert {r["state"] for r in rows} == {"COMPLETED"}
    for i in range(3):
        assert await sh(conn, "cat", f"{out_dir}/array-{tag}-{i}") == f"task {i}\n"


async def test_afterok_dependency_orders_jobs(site_env: SiteEnv, ssh_as) -> None:
    conn = await ssh_as("hpcuser1")
    out = f"{site_env.scratch('hpcuser1')}/chain-{uuid.uuid4().hex[:8]}"
    first = await submit(conn, f"#!/bin/bash\nsleep 1\necho first >> {out}\n", "--output=/dev/null")
    second = await submit(
        conn,
        f"#!/bin/bash\necho second >> {out}\n",
        f"--dependency=afterok:{first}",
        "--output=/dev/null",
    )
    await wait_final(conn, second)
    assert await sh(conn, "cat", out) == "first\nsecond\n"
    # a dependant of a failed job never runs
    failing = await submit(conn, "#!/bin/bash\nexit 1\n", "--output=/dev/null")
    never = await submit(
        conn,
        "#!/bin/bash\ntrue\n",
        f"--dependency=afterok:{failing}",
        "--kill-on-invalid-dep=yes",
        "--output=/dev/null",
    )
    [row] = await wait_final(conn, never)
    assert row["state"] == "CANCELLED"


async def test_users_cannot_read_each_others_scratch(site_env: SiteEnv, ssh_as) -> None:
    owner = await ssh_as("hpcuser1")
    other = await ssh_as("hpcuser2")
    secret = f"{site_env.scratch('hpcuser1')}/secret-{uuid.uuid4().hex[:8]}"
    await sh(owner, "sh", "-c", f"echo secret > {shlex.quote(secret)}")
    result = await other.run(shlex.join(["cat", secret]), check=False)
    assert result.exit_status != 0
    assert "Permission denied" in str(result.stderr)
    listing = await other.run(shlex.join(["ls", site_env.scratch("hpcuser1")]), check=False)
    assert listing.exit_status != 0
    assert await sh(other, "whoami") == "hpcuser2\n"
